export { Client, type CallOptions, type ClientOptions, newOpenKey } from "./client.js";
export {
  ErrorCode,
  type ErrorName,
  OptimdError,
  ProtocolError,
  ServerError,
  TimeoutError,
  TransportError,
  errorName,
} from "./errors.js";
export {
  PROTO_REP0,
  PROTO_REQ0,
  RepServer,
  ReqSocket,
  type TlsOptions,
  parseUrl,
  type RepHandler,
  tlsFromFiles,
} from "./sp.js";
export { MAX_DIMS, type Dtype, type Tensor, decodeTensor, elementCount, encodeTensor, tensor } from "./tensor.js";
export * from "./wire.js";
