/**
 * The client's errors. Every error it raises is an {@link OptimdError}:
 * - {@link ServerError}: the daemon answered with an error reply (protocol.md §6);
 * - {@link ProtocolError}: a reply that is not a valid protocol-1 reply;
 * - {@link TransportError} (and its {@link TimeoutError}): the request could
 *   not be delivered or got no reply in time.
 * Arguments the client refuses before sending anything raise TypeError or
 * RangeError, as the JavaScript built-ins do.
 */

/** The error codes of protocol.md §6, by name. */
export const ErrorCode = {
  MALFORMED: 1,
  BAD_REQUEST: 2,
  UNKNOWN_OP: 3,
  VERSION: 4,
  TOO_LARGE: 5,
  UNKNOWN_PLUGIN: 10,
  WRONG_KIND: 11,
  UNKNOWN_HPARAM: 12,
  BAD_HPARAM: 13,
  NOT_MUTABLE: 14,
  UNKNOWN_SESSION: 20,
  BAD_TOKEN: 21,
  SESSION_EXISTS: 22,
  LIMIT: 23,
  UNKNOWN_WORKER: 24,
  TIMEOUT: 25,
  STEP_PENDING: 26,
  UNKNOWN_PARAM: 30,
  PARAM_EXISTS: 31,
  BAD_TENSOR: 32,
  NONFINITE: 33,
  PLUGIN: 40,
  INTERNAL: 50,
  NOMEM: 51,
  SHUTTING_DOWN: 52,
  STORAGE: 53,
} as const;

export type ErrorName = keyof typeof ErrorCode;

/** The §6 name of a code, or undefined for a number §6 does not list. */
export function errorName(code: number): ErrorName | undefined {
  for (const [name, value] of Object.entries(ErrorCode)) {
    if (value === code) return name as ErrorName;
  }
  return undefined;
}

/** Base class of everything the client throws on its own account. */
export class OptimdError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * An error reply. `name` is the protocol's error name ("BAD_TOKEN"), `code`
 * its number (21), `message` the daemon's text (not stable: match on `code`).
 * A name the daemon sent that this client does not know is kept as sent.
 */
export class ServerError extends OptimdError {
  readonly code: number;
  /** The id of the reply (0 when the daemon could not decode the request). */
  readonly requestId: bigint;
  override readonly name: string;

  constructor(code: number, name: string, message: string, requestId: bigint = 0n) {
    super(message);
    this.code = code;
    this.name = name;
    this.requestId = requestId;
  }
}

/** A reply that breaks the protocol: not msgpack, not a map, wrong id or
 * version, a key missing or of the wrong type, a tensor whose bytes do not
 * match its shape. */
export class ProtocolError extends OptimdError {}

/** The request could not be sent, or the connection failed before the reply
 * came. Whether the daemon applied the request is unknown: retry a `step`
 * with the same `seq` to apply it at most once. */
export class TransportError extends OptimdError {}

/** No reply within the call's timeout. The request may still be applied. */
export class TimeoutError extends TransportError {}
