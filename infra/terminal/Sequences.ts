/**
 * A streaming tokenizer of terminal byte streams: finds the control sequences (ESC, CSI, OSC, DCS)
 * in output or input that arrives in chunks split anywhere, and keeps the bytes of a sequence that
 * a chunk left unfinished. It follows the state machine of xterm.js' parser
 * (the VT500 one of vt100.net) closely enough for those two jobs; 8-bit C1 controls are not
 * recognised (in UTF-8 streams they never appear as bytes), as in a UTF-8 xterm.js.
 */

/** One complete control sequence. */
export interface Sequence {
  readonly kind: "esc" | "csi" | "osc" | "dcs"
  /** A private marker (`?`, `>`, `=`, `<`) right after the introducer, or "". */
  readonly prefix: string
  /** The parameter bytes (digits, `;`, `:`), after the prefix. */
  readonly params: string
  readonly intermediates: string
  /** The final character; "" for OSC. */
  readonly final: string
  /** An OSC's whole payload (`10;?`), or a DCS's data string. */
  readonly data: string
  /** Offset in the chunk just after the sequence's last byte. */
  readonly end: number
  /** Offset in the chunk of the sequence's first byte (negative when it began in an earlier chunk). */
  readonly start: number
}

const enum State {
  Ground,
  Escape,
  EscapeIntermediate,
  Csi,
  Osc,
  Dcs,
  /** SOS, PM, APC: ignored until ST. */
  Ignore
}

/** Bytes of an unfinished string sequence kept for `tail` (the rest is counted, not kept). */
const keepLimit = 64 * 1024

const decoder = new TextDecoder()

/** A tokenizer of one byte stream. */
export class Scanner {
  private state = State.Ground
  private prefix = ""
  private params = ""
  private intermediates = ""
  private data: Array<number> = []
  /** The bytes of the sequence under way (for `tail`). */
  private pending: Array<number> = []
  /** Whether the last byte was an ESC inside a string (so `\` ends it). */
  private stringEscape = false
  /** Set when the last byte began a new sequence. */
  private fresh = false

  /** Scans `chunk`, calling `onSequence` for each sequence it completes. */
  scan(chunk: Uint8Array, onSequence?: (sequence: Sequence) => void): void {
    let start = -this.pending.length
    let at = 0
    const length = chunk.length
    while (at < length) {
      if (this.state === State.Ground) {
        const next = chunk.indexOf(0x1b, at)
        if (next < 0) return
        this.restart()
        start = next
        at = next + 1
        continue
      }
      const byte = chunk[at] ?? 0
      at++
      if (this.pending.length < keepLimit) this.pending.push(byte)
      this.fresh = false
      const done = this.step(byte)
      if (done !== undefined) onSequence?.({ ...done, end: at, start })
      if (this.grounded()) this.pending = []
      else if (this.fresh) start = at - this.pending.length
    }
  }

  /** The bytes of a sequence left unfinished at the end of what was scanned. */
  tail(): Uint8Array {
    return Uint8Array.from(this.pending)
  }

  private grounded(): boolean {
    return this.state === State.Ground
  }

  private begin(): void {
    this.prefix = ""
    this.params = ""
    this.intermediates = ""
    this.data = []
    this.pending = []
    this.stringEscape = false
  }

  private step(byte: number): Omit<Sequence, "end" | "start"> | undefined {
    if (byte === 0x18 || byte === 0x1a) {
      this.state = State.Ground
      return undefined
    }
    switch (this.state) {
      case State.Escape:
      case State.EscapeIntermediate:
        if (byte === 0x1b) return this.restart()
        if (byte < 0x20 || byte === 0x7f) return undefined
        if (byte < 0x30) {
          this.intermediates += String.fromCharCode(byte)
          this.state = State.EscapeIntermediate
          return undefined
        }
        if (this.state === State.Escape) {
          if (byte === 0x5b) return this.enter(State.Csi)
          if (byte === 0x5d) return this.enter(State.Osc)
          if (byte === 0x50) return this.enter(State.Dcs)
          if (byte === 0x58 || byte === 0x5e || byte === 0x5f) return this.enter(State.Ignore)
        }
        this.state = State.Ground
        return this.sequence("esc", String.fromCharCode(byte))
      case State.Csi:
        if (byte === 0x1b) return this.restart()
        if (byte < 0x20 || byte === 0x7f) return undefined
        if (
          byte >= 0x3c &&
          byte <= 0x3f &&
          this.params === "" &&
          this.prefix === "" &&
          this.intermediates === ""
        ) {
          this.prefix = String.fromCharCode(byte)
          return undefined
        }
        if (byte >= 0x30 && byte <= 0x3b && this.intermediates === "") {
          this.params += String.fromCharCode(byte)
          return undefined
        }
        if (byte >= 0x20 && byte <= 0x2f) {
          this.intermediates += String.fromCharCode(byte)
          return undefined
        }
        if (byte >= 0x40 && byte <= 0x7e) {
          this.state = State.Ground
          return this.sequence("csi", String.fromCharCode(byte))
        }
        // A malformed sequence: xterm.js ignores it up to its final byte.
        this.prefix = "!"
        return undefined
      case State.Osc:
      case State.Dcs:
      case State.Ignore:
        return this.string(byte)
      default:
        return undefined
    }
  }

  private string(byte: number): Omit<Sequence, "end" | "start"> | undefined {
    const kind = this.state === State.Osc ? "osc" : this.state === State.Dcs ? "dcs" : undefined
    if (this.stringEscape) {
      this.stringEscape = false
      // ESC ends the string whatever follows; `\` completes the ST, anything else starts anew.
      this.state = State.Ground
      const finished = kind === undefined ? undefined : this.finishString(kind)
      if (byte !== 0x5c) {
        this.restart()
        this.pending.push(byte)
        const other = this.step(byte)
        if (other !== undefined) return other
      }
      return finished
    }
    if (byte === 0x1b) {
      this.stringEscape = true
      return undefined
    }
    if (byte === 0x07 && this.state === State.Osc) {
      this.state = State.Ground
      return this.finishString("osc")
    }
    if (this.data.length < keepLimit && (byte >= 0x20 || this.state !== State.Osc)) this.data.push(byte)
    return undefined
  }

  private finishString(kind: "osc" | "dcs"): Omit<Sequence, "end" | "start"> {
    const text = decoder.decode(Uint8Array.from(this.data))
    if (kind === "osc") return { kind, prefix: "", params: "", intermediates: "", final: "", data: text }
    // A DCS: parameters, intermediates and a final, then the data string.
    const header = /^([<=>?]?)([0-9;:]*)([ -/]*)([@-~])/.exec(text)
    return {
      kind,
      prefix: header?.[1] ?? "",
      params: header?.[2] ?? "",
      intermediates: header?.[3] ?? "",
      final: header?.[4] ?? "",
      data: header === null ? text : text.slice(header[0].length)
    }
  }

  private restart(): undefined {
    this.begin()
    this.pending = [0x1b]
    this.state = State.Escape
    this.fresh = true
    return undefined
  }

  private enter(state: State): undefined {
    this.state = state
    return undefined
  }

  private sequence(kind: "esc" | "csi", final: string): Omit<Sequence, "end" | "start"> | undefined {
    if (this.prefix === "!") return undefined
    return {
      kind,
      prefix: this.prefix,
      params: this.params,
      intermediates: this.intermediates,
      final,
      data: ""
    }
  }
}
