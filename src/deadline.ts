/** Bounds a wait on something outside the process (Redis, above all) that may never answer. */
export class DeadlineError extends Error {}

/** `work`, or a DeadlineError once `ms` have passed without an answer (`work` itself goes on). */
export async function withDeadline<T>(work: Promise<T>, what: string, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DeadlineError(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}
