/**
 * Terminal queries and the automatic replies to them. A program asks its terminal things (device
 * attributes, cursor position, a mode, a colour, the size) by writing a query; the terminal answers
 * on the program's input. In a session the server's screen model is that terminal and answers every
 * query once; the clients' terminals answer too, because they see the same output, and those
 * answers must not reach the program. This module names each query by the kind of reply it asks
 * for, and recognises and removes those replies from a client's input.
 *
 * A reply kind is the shape of the reply: `csi` + private marker + intermediates + final (`csi?c`
 * for primary device attributes), `osc` + its number (`osc11`), or `dcs` + marker + intermediates +
 * final (`dcs$r`).
 */
import { Scanner, type Sequence } from "./Sequences.js"

/** The shape of an automatic reply. */
export type ReplyKind = string

const firstParam = (params: string) => params.split(/[;:]/)[0] ?? ""

/** The replies the query `sequence` (in program output) asks for: none when it is no query. */
export const repliesTo = (sequence: Sequence): ReadonlyArray<ReplyKind> => {
  const { kind, prefix, params, intermediates, final } = sequence
  if (kind === "esc") return final === "Z" && intermediates === "" ? ["csi?c"] : []
  if (kind === "csi") {
    const first = firstParam(params)
    if (final === "c" && intermediates === "" && (first === "" || first === "0")) {
      if (prefix === "") return ["csi?c"]
      if (prefix === ">") return ["csi>c"]
      if (prefix === "=") return ["dcs!|"]
    }
    if (final === "n" && intermediates === "") {
      if (prefix === "" && first === "5") return ["csin"]
      if (prefix === "" && first === "6") return ["csiR"]
      if (prefix === "?") return [first === "6" ? "csi?R" : "csi?n"]
    }
    if (final === "p" && intermediates === "$" && (prefix === "" || prefix === "?")) return [`csi${prefix}$y`]
    if (final === "t" && prefix === "" && intermediates === "") {
      if (["11", "13", "14", "15", "16", "18", "19"].includes(first)) return ["csit"]
      if (first === "20") return ["oscL"]
      if (first === "21") return ["oscl"]
    }
    if (final === "u" && prefix === "?" && params === "") return ["csi?u"]
    if (final === "q" && prefix === ">" && intermediates === "" && (first === "" || first === "0"))
      return ["dcs>|"]
    if (final === "m" && prefix === "?" && intermediates === "") return ["csi>m"]
    return []
  }
  if (kind === "dcs") {
    if (final === "q" && prefix === "" && (intermediates === "$" || intermediates === "+"))
      return [`dcs${intermediates}r`]
    return []
  }
  const fields = sequence.data.split(";")
  const code = Number(fields[0])
  if (!Number.isInteger(code)) return []
  const asked: Array<ReplyKind> = []
  if (code === 4 || code === 5) {
    for (let at = 2; at < fields.length; at += 2) if (fields[at] === "?") asked.push(`osc${code}`)
  } else if (code >= 10 && code <= 19) {
    fields.slice(1).forEach((field, offset) => {
      if (field === "?" && code + offset <= 19) asked.push(`osc${code + offset}`)
    })
  } else if (code === 52 && fields[2] === "?") asked.push("osc52")
  return asked
}

/** The kind of `sequence` (in a client's input) when it has the shape of an automatic reply. */
export const replyKind = (sequence: Sequence): ReplyKind | undefined => {
  switch (sequence.kind) {
    case "csi":
      return `csi${sequence.prefix}${sequence.intermediates}${sequence.final}`
    case "dcs":
      return `dcs${sequence.prefix}${sequence.intermediates}${sequence.final}`
    case "osc": {
      const head = sequence.data.charAt(0)
      if (head === "L" || head === "l") return `osc${head}`
      return `osc${sequence.data.split(";")[0] ?? ""}`
    }
    default:
      return undefined
  }
}

/**
 * `input` without the replies `expected` claims (it is asked for each reply kind found, in order,
 * and says whether that reply was expected). A reply split across two inputs is not recognised.
 */
export const withoutReplies = (input: Uint8Array, expected: (kind: ReplyKind) => boolean): Uint8Array => {
  const dropped: Array<readonly [number, number]> = []
  new Scanner().scan(input, (sequence) => {
    const kind = replyKind(sequence)
    if (kind !== undefined && sequence.start >= 0 && expected(kind))
      dropped.push([sequence.start, sequence.end])
  })
  if (dropped.length === 0) return input
  const parts: Array<Uint8Array> = []
  let from = 0
  for (const [start, end] of dropped) {
    parts.push(input.subarray(from, start))
    from = end
  }
  parts.push(input.subarray(from))
  return Buffer.concat(parts)
}

/** The queries in one stream of program output, and where each ends. */
export class QueryScanner {
  private readonly scanner = new Scanner()

  /** The queries `chunk` completes: the offset in `chunk` after each, and the replies it asks for. */
  scan(chunk: Uint8Array): Array<{ readonly end: number; readonly replies: ReadonlyArray<ReplyKind> }> {
    const found: Array<{ readonly end: number; readonly replies: ReadonlyArray<ReplyKind> }> = []
    this.scanner.scan(chunk, (sequence) => {
      const replies = repliesTo(sequence)
      if (replies.length > 0) found.push({ end: sequence.end, replies })
    })
    return found
  }
}
