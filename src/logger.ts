import pino from 'pino';

export type Logger = pino.Logger;

/** Payment codes and keys never reach the logs, whatever object carries them. */
const REDACT = [
  'payment_code',
  '*.payment_code',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'req.headers.authorization',
  '*.*.private_key',
  'private_key',
  '*.private_key',
  'secret_key',
  '*.secret_key',
  'apiv3_key',
  '*.apiv3_key',
  'webhook_secret',
  '*.webhook_secret',
  'secret',
  '*.secret',
];

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  const options = { level, redact: { paths: REDACT, censor: '[redacted]' }, base: { service: 'tillbridge' } };
  return destination ? pino(options, destination) : pino(options);
}
