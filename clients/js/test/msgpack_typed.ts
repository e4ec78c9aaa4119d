/**
 * A small msgpack reader for the conformance test that keeps what a JS value
 * loses: integer vs float, float32 vs float64. It is deliberately separate
 * from the client's decoder (@msgpack/msgpack), so the test does not check
 * the client with the client's own code.
 */
export type Node =
  | { t: "nil" }
  | { t: "bool"; v: boolean }
  | { t: "int"; v: bigint }
  | { t: "float"; v: number; f32: boolean }
  | { t: "str"; v: string }
  | { t: "bin"; v: string } // hex
  | { t: "arr"; v: Node[] }
  | { t: "map"; v: Array<[Node, Node]> }
  | { t: "ext"; type: number; v: string };

export function readMsgpack(bytes: Uint8Array): Node {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const need = (n: number) => {
    if (pos + n > bytes.length) throw new Error("truncated msgpack");
  };
  const u8 = () => (need(1), bytes[pos++]!);
  const take = (n: number) => {
    need(n);
    const out = bytes.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const uint = (n: number): number => {
    need(n);
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + bytes[pos++]!;
    return v;
  };
  const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
  const str = (n: number): Node => ({ t: "str", v: new TextDecoder("utf-8", { fatal: true }).decode(take(n)) });
  const arr = (n: number): Node => ({ t: "arr", v: Array.from({ length: n }, () => value()) });
  const map = (n: number): Node => ({ t: "map", v: Array.from({ length: n }, () => [value(), value()] as [Node, Node]) });
  const ext = (n: number): Node => {
    const type = view.getInt8((need(1), pos++));
    return { t: "ext", type, v: hex(take(n)) };
  };
  function value(): Node {
    const b = u8();
    if (b <= 0x7f) return { t: "int", v: BigInt(b) };
    if (b >= 0xe0) return { t: "int", v: BigInt(b - 0x100) };
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return { t: "nil" };
      case 0xc2: return { t: "bool", v: false };
      case 0xc3: return { t: "bool", v: true };
      case 0xc4: return { t: "bin", v: hex(take(uint(1))) };
      case 0xc5: return { t: "bin", v: hex(take(uint(2))) };
      case 0xc6: return { t: "bin", v: hex(take(uint(4))) };
      case 0xc7: return ext(uint(1));
      case 0xc8: return ext(uint(2));
      case 0xc9: return ext(uint(4));
      case 0xca: { need(4); const v = view.getFloat32(pos); pos += 4; return { t: "float", v, f32: true }; }
      case 0xcb: { need(8); const v = view.getFloat64(pos); pos += 8; return { t: "float", v, f32: false }; }
      case 0xcc: return { t: "int", v: BigInt(uint(1)) };
      case 0xcd: return { t: "int", v: BigInt(uint(2)) };
      case 0xce: return { t: "int", v: BigInt(uint(4)) };
      case 0xcf: { need(8); const v = view.getBigUint64(pos); pos += 8; return { t: "int", v }; }
      case 0xd0: { need(1); const v = view.getInt8(pos); pos += 1; return { t: "int", v: BigInt(v) }; }
      case 0xd1: { need(2); const v = view.getInt16(pos); pos += 2; return { t: "int", v: BigInt(v) }; }
      case 0xd2: { need(4); const v = view.getInt32(pos); pos += 4; return { t: "int", v: BigInt(v) }; }
      case 0xd3: { need(8); const v = view.getBigInt64(pos); pos += 8; return { t: "int", v }; }
      case 0xd4: return ext(1);
      case 0xd5: return ext(2);
      case 0xd6: return ext(4);
      case 0xd7: return ext(8);
      case 0xd8: return ext(16);
      case 0xd9: return str(uint(1));
      case 0xda: return str(uint(2));
      case 0xdb: return str(uint(4));
      case 0xdc: return arr(uint(2));
      case 0xdd: return arr(uint(4));
      case 0xde: return map(uint(2));
      case 0xdf: return map(uint(4));
    }
    throw new Error(`msgpack byte 0x${b.toString(16)} is never used`);
  }
  const v = value();
  if (pos !== bytes.length) throw new Error(`${bytes.length - pos} bytes after the value`);
  return v;
}

/**
 * Why `a` and `b` differ as protocol values, or undefined when they do not:
 * map key order, integer width and float32-vs-float64 encoding of the same
 * value are ignored (a float32 matches a float64 that rounds to it); an
 * integer matches a float of the same value (JSON cannot tell 1 from 1.0,
 * and protocol.md §3 accepts an integer wherever a float is expected).
 * `skipKeys` are ignored at the top level.
 */
export function diff(a: Node, b: Node, where = "$", skipKeys: readonly string[] = []): string | undefined {
  const num = (n: Node) => (n.t === "int" ? Number(n.v) : n.t === "float" ? n.v : undefined);
  if ((a.t === "int" || a.t === "float") && (b.t === "int" || b.t === "float")) {
    if (a.t === "int" && b.t === "int") return a.v === b.v ? undefined : `${where}: ${a.v} != ${b.v}`;
    const x = num(a)!, y = num(b)!;
    if (x === y || (Number.isNaN(x) && Number.isNaN(y))) return undefined;
    const f32 = (a.t === "float" && a.f32) || (b.t === "float" && b.f32);
    if (f32 && Math.fround(x) === Math.fround(y)) return undefined;
    return `${where}: ${x} != ${y}`;
  }
  if (a.t !== b.t) return `${where}: ${a.t} vs ${b.t}`;
  switch (a.t) {
    case "nil": return undefined;
    case "bool": case "str": case "bin":
      return a.v === (b as typeof a).v ? undefined : `${where}: ${JSON.stringify(a.v)} != ${JSON.stringify((b as typeof a).v)}`;
    case "ext": {
      const e = b as typeof a;
      return a.type === e.type && a.v === e.v ? undefined : `${where}: ext differs`;
    }
    case "arr": {
      const bv = (b as typeof a).v;
      if (a.v.length !== bv.length) return `${where}: ${a.v.length} vs ${bv.length} elements`;
      for (let i = 0; i < a.v.length; i++) {
        const d = diff(a.v[i]!, bv[i]!, `${where}[${i}]`);
        if (d) return d;
      }
      return undefined;
    }
    case "map": {
      const keyed = (m: Array<[Node, Node]>) => {
        const out = new Map<string, Node>();
        for (const [k, v] of m) {
          if (k.t !== "str") throw new Error(`${where}: a map key is a ${k.t}`);
          if (out.has(k.v)) throw new Error(`${where}: key ${k.v} twice`);
          if (!skipKeys.includes(k.v)) out.set(k.v, v);
        }
        return out;
      };
      const ma = keyed(a.v), mb = keyed((b as typeof a).v);
      const ka = [...ma.keys()].sort(), kb = [...mb.keys()].sort();
      if (ka.join("\0") !== kb.join("\0")) return `${where}: keys [${ka}] vs [${kb}]`;
      for (const k of ka) {
        const d = diff(ma.get(k)!, mb.get(k)!, `${where}.${k}`);
        if (d) return d;
      }
      return undefined;
    }
  }
}
