/**
 * Switches of the simulated Antom: the documented variants it can emit (PROVIDERS.md rule 6) and
 * the faults it can inject. Set at start, by the test handle, or by `POST /_sim/switches`.
 */
export interface SimulatorSwitches {
  /** `request-time`/`response-time` as epoch milliseconds instead of ISO-8601. */
  epoch_time: boolean;
  /** Signature header value as raw base64 instead of URL-encoded. */
  raw_signature: boolean;
  /** `quoteCurrencyPair` numeric (`978/156`) instead of alphabetic (`EUR/CNY`). */
  numeric_pair: boolean;
  /** Amount values and quote prices as JSON numbers instead of strings. */
  json_numbers: boolean;
  /** Send every notification twice. */
  duplicate_notifications: boolean;
  /** Antom's sandbox: no retry after a wrongly formatted acknowledgement. */
  no_retry_on_malformed_ack: boolean;
  /** Sign the SIGNATURE_INVALID answers too (Antom sends them unsigned). */
  sign_errors: boolean;
  /** Fault: strip the signature headers from every response. */
  unsigned_responses: boolean;
  /** Fault: sign every response with a wrong signature. */
  bad_signatures: boolean;
  /** Refunds answer S with isAsyncRefund and complete about 3 s later. */
  async_refunds: boolean;
  /** Send notifyPayment at all. */
  notifications: boolean;
  /** Fault: answer an Order Code creation U PAYMENT_IN_PROCESS, without the code. */
  order_code_unknown: boolean;
  /**
   * Fault: answer a new Order Code creation U PAYMENT_IN_PROCESS, without the code, though the order
   * is made: the same request sent again gets the code.
   */
  order_code_unknown_once: boolean;
  /** Fault: answer every inquiryPayment F ACCESS_DENIED (a final refusal of the query itself). */
  inquiry_refused: boolean;
  /**
   * Fault: answer a new `pay` U UNKNOWN_EXCEPTION and keep nothing of it, so inquiries say
   * ORDER_NOT_EXIST (as when Antom has not made the order visible yet).
   */
  pay_unknown_unrecorded: boolean;
}

export const DEFAULT_SWITCHES: SimulatorSwitches = {
  epoch_time: false,
  raw_signature: false,
  numeric_pair: false,
  json_numbers: false,
  duplicate_notifications: false,
  no_retry_on_malformed_ack: false,
  sign_errors: false,
  unsigned_responses: false,
  bad_signatures: false,
  async_refunds: false,
  notifications: true,
  order_code_unknown: false,
  order_code_unknown_once: false,
  inquiry_refused: false,
  pay_unknown_unrecorded: false,
};

export function applySwitches(target: SimulatorSwitches, patch: unknown): string[] {
  const unknown: string[] = [];
  if (typeof patch !== 'object' || patch === null) return ['(not an object)'];
  for (const [name, value] of Object.entries(patch)) {
    if (!Object.hasOwn(DEFAULT_SWITCHES, name) || typeof value !== 'boolean') {
      unknown.push(name);
      continue;
    }
    target[name as keyof SimulatorSwitches] = value;
  }
  return unknown;
}
