/**
 * Tensors as protocol.md §3 defines them: `{dtype, shape, data}` with the
 * elements little-endian in row-major order.
 *
 * Copies: on a little-endian host an outgoing tensor is handed to msgpack as
 * a byte view of its array (msgpack then writes it once into the message),
 * and an incoming one becomes a typed array viewing the received message
 * when its bytes lie at an offset the element size divides; otherwise the
 * bytes are copied once. On a big-endian host each is converted in a copy.
 */
import { ProtocolError } from "./errors.js";

export type Dtype = "f32" | "f64";

export type Tensor =
  | { dtype: "f32"; shape: number[]; data: Float32Array }
  | { dtype: "f64"; shape: number[]; data: Float64Array };

/** Most dimensions a tensor may have (protocol.md §5). */
export const MAX_DIMS = 8;

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A tensor over `data` (not copied). `shape` defaults to `[data.length]`;
 * the dtype follows the array type.
 */
export function tensor(data: Float32Array, shape?: number[]): Tensor & { dtype: "f32" };
export function tensor(data: Float64Array, shape?: number[]): Tensor & { dtype: "f64" };
export function tensor(data: Float32Array | Float64Array, shape?: number[]): Tensor;
export function tensor(data: Float32Array | Float64Array, shape?: number[]): Tensor {
  const s = shape ?? [data.length];
  const t = (data instanceof Float32Array
    ? { dtype: "f32", shape: s, data }
    : { dtype: "f64", shape: s, data }) as Tensor;
  checkTensor(t, "tensor");
  return t;
}

/** Number of elements of a shape ([] is a scalar: 1). */
export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function checkShape(shape: unknown, what: string): shape is number[] {
  if (!Array.isArray(shape)) return false;
  if (shape.length > MAX_DIMS) throw new RangeError(`${what}: ${shape.length} dimensions, at most ${MAX_DIMS}`);
  return shape.every((d) => Number.isSafeInteger(d) && d >= 0);
}

/** Throws TypeError/RangeError when `t` is not a tensor this client can send. */
export function checkTensor(t: unknown, what: string): asserts t is Tensor {
  if (typeof t !== "object" || t === null) throw new TypeError(`${what} is not a tensor`);
  const { dtype, shape, data } = t as Record<string, unknown>;
  if (dtype === "f32") {
    if (!(data instanceof Float32Array)) throw new TypeError(`${what}: an f32 tensor needs a Float32Array`);
  } else if (dtype === "f64") {
    if (!(data instanceof Float64Array)) throw new TypeError(`${what}: an f64 tensor needs a Float64Array`);
  } else {
    throw new TypeError(`${what}: dtype ${String(dtype)} (the protocol has f32 and f64)`);
  }
  if (!checkShape(shape, what)) throw new TypeError(`${what}: shape must be an array of non-negative integers`);
  const n = elementCount(shape);
  if (data.length !== n) throw new RangeError(`${what}: ${data.length} elements for shape [${shape.join(", ")}]`);
}

/** The little-endian bytes of a tensor's elements (a view where possible). */
export function tensorBytes(t: Tensor): Uint8Array {
  const a = t.data;
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength);
  const view = new DataView(out.buffer);
  if (a instanceof Float32Array) a.forEach((x, i) => view.setFloat32(4 * i, x, true));
  else a.forEach((x, i) => view.setFloat64(8 * i, x, true));
  return out;
}

/** The wire map of a tensor (checked first). */
export function encodeTensor(t: Tensor, what = "tensor"): Record<string, unknown> {
  checkTensor(t, what);
  return { dtype: t.dtype, shape: [...t.shape], data: tensorBytes(t) };
}

function hasOwn(o: object, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}

function toIndex(v: unknown): number | undefined {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  if (typeof v === "bigint") return v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
  return undefined;
}

/** A received tensor map as a {@link Tensor}; ProtocolError when malformed. */
export function decodeTensor(value: unknown, what = "tensor"): Tensor {
  if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Uint8Array) {
    throw new ProtocolError(`${what} is not a tensor map`);
  }
  const m = value as Record<string, unknown>;
  const dtype = hasOwn(m, "dtype") ? m["dtype"] : undefined;
  if (dtype !== "f32" && dtype !== "f64") throw new ProtocolError(`${what} has dtype ${JSON.stringify(dtype)}`);
  const rawShape = hasOwn(m, "shape") ? m["shape"] : undefined;
  if (!Array.isArray(rawShape) || rawShape.length > MAX_DIMS) throw new ProtocolError(`${what} has no valid shape`);
  const shape: number[] = [];
  for (const d of rawShape) {
    const x = toIndex(d);
    if (x === undefined) throw new ProtocolError(`${what} has shape entry ${String(d)}`);
    shape.push(x);
  }
  const data = hasOwn(m, "data") ? m["data"] : undefined;
  if (!(data instanceof Uint8Array)) throw new ProtocolError(`${what} has no binary data`);
  const size = dtype === "f32" ? 4 : 8;
  const n = elementCount(shape);
  if (data.byteLength !== n * size) {
    throw new ProtocolError(`${what}: ${data.byteLength} bytes for shape [${shape.join(", ")}] of ${dtype}`);
  }
  if (dtype === "f32") return { dtype, shape, data: toFloat32(data, n) };
  return { dtype, shape, data: toFloat64(data, n) };
}

function toFloat32(bytes: Uint8Array, n: number): Float32Array {
  if (LITTLE_ENDIAN && bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Float32Array(n);
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer).set(bytes);
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(4 * i, true);
  }
  return out;
}

function toFloat64(bytes: Uint8Array, n: number): Float64Array {
  if (LITTLE_ENDIAN && bytes.byteOffset % 8 === 0) return new Float64Array(bytes.buffer, bytes.byteOffset, n);
  const out = new Float64Array(n);
  if (LITTLE_ENDIAN) {
    new Uint8Array(out.buffer).set(bytes);
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[i] = view.getFloat64(8 * i, true);
  }
  return out;
}
