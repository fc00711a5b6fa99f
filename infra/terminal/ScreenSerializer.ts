/**
 * The bytes that redraw a headless xterm.js terminal exactly in a fresh one of the same size: every
 * cell with all its attributes (underline style and colour, overline, protection, hyperlinks), wrapped
 * lines, both buffers with their cursors, saved cursors, scroll regions and tab stops, the pen, the
 * character sets, the title and its stack, and every mode the emulator tracks.
 *
 * xterm.js keeps most of this only internally, so it is read from `_core` through the small typed
 * view below (the one boundary where the shape is assumed; the tests pin it). What cannot be
 * reproduced with escape sequences is approximated and named where it happens.
 */
import Headless from "@xterm/headless"
import type { Terminal } from "@xterm/headless"

/** What a serialization holds beyond the visible screen. */
export interface Options {
  /** How many scrollback lines to keep, the newest; all of them when absent. */
  readonly scrollbackLines?: number | undefined
}

/** The redraw of `terminal` as it is now (after everything it has parsed). */
export const serialize = (terminal: Terminal, options: Options = {}): string => {
  const core = internals(terminal)
  const out = new Writer(terminal.cols, terminal.rows, core, scratchCell(terminal))
  const buffers = core._bufferService.buffers
  const altActive = buffers.active === buffers.alt
  out.buffer(buffers.normal, options.scrollbackLines)
  if (altActive) {
    out.cursor(buffers.normal)
    out.bufferState(buffers.normal)
    // The pen must not leak into the alternate screen (it is filled with the pen's background).
    out.resetPen()
    out.raw("\x1b[?1047h")
    out.buffer(buffers.alt, 0)
    out.bufferState(buffers.alt)
  } else {
    out.bufferState(buffers.normal)
  }
  out.finalState(altActive ? buffers.alt : buffers.normal)
  return out.text()
}

// The internal shape read (xterm.js 6) ------------------------------------------------------

interface ExtendedAttrs {
  readonly _ext: number
  readonly _urlId: number
}

interface Cell {
  readonly content: number
  readonly fg: number
  readonly bg: number
  readonly extended: ExtendedAttrs
  getChars(): string
  getWidth(): number
}

interface Line {
  readonly isWrapped: boolean
  loadCell(index: number, cell: Cell): Cell
}

interface Charset {
  readonly [key: string]: string | undefined
}

interface Buffer {
  readonly lines: { readonly length: number; get(index: number): Line | undefined }
  readonly ybase: number
  readonly x: number
  readonly y: number
  readonly scrollTop: number
  readonly scrollBottom: number
  readonly savedX: number
  readonly savedY: number
  readonly savedCurAttrData: { readonly fg: number; readonly bg: number }
  readonly savedCharset: Charset | undefined
  readonly tabs: { readonly [column: number]: boolean | undefined }
}

interface Core {
  readonly _bufferService: {
    readonly buffers: { readonly normal: Buffer; readonly alt: Buffer; readonly active: Buffer }
  }
  readonly coreService: {
    readonly isCursorHidden: boolean
    readonly modes: { readonly insertMode: boolean }
    readonly decPrivateModes: {
      readonly applicationCursorKeys: boolean
      readonly applicationKeypad: boolean
      readonly bracketedPasteMode: boolean
      readonly cursorBlink: boolean | undefined
      readonly cursorStyle: "block" | "underline" | "bar" | undefined
      readonly origin: boolean
      readonly reverseWraparound: boolean
      readonly sendFocus: boolean
      readonly synchronizedOutput: boolean
      readonly wraparound: boolean
    }
  }
  readonly coreMouseService: { readonly activeProtocol: string; readonly activeEncoding: string }
  readonly _charsetService: {
    readonly charset: Charset | undefined
    readonly glevel: number
    readonly _charsets: ReadonlyArray<Charset | undefined>
  }
  readonly optionsService: {
    readonly rawOptions: { readonly cursorBlink: boolean; readonly convertEol: boolean }
  }
  readonly _oscLinkService: {
    getLinkData(id: number): { readonly id?: string; readonly uri: string } | undefined
  }
  readonly _inputHandler: {
    readonly _curAttrData: { readonly fg: number; readonly bg: number; readonly extended: ExtendedAttrs }
    readonly _windowTitle: string
    readonly _iconName: string
    readonly _windowTitleStack: ReadonlyArray<string>
    readonly _iconNameStack: ReadonlyArray<string>
    parse(data: string): void
  }
}

/** The boundary: xterm.js' internals, whose shape the serializer's tests pin. */
const internals = (terminal: Terminal): Core => (terminal as unknown as { readonly _core: Core })._core

/**
 * A cell of its own to read cells into. Not the internal buffer's `getNullCell()`: that is the
 * buffer's one shared blank, which erases and scrolls fill with, so reading a cell into it made
 * every later erase write that cell's character.
 */
const scratchCell = (terminal: Terminal): Cell => terminal.buffer.active.getNullCell() as unknown as Cell

// Attribute bits (xterm.js common/buffer/Constants.ts) ----------------------------------------

const CM_MASK = 0x3000000
const CM_P16 = 0x1000000
const CM_P256 = 0x2000000
const CM_RGB = 0x3000000
const FG_INVERSE = 0x4000000
const FG_BOLD = 0x8000000
const FG_UNDERLINE = 0x10000000
const FG_BLINK = 0x20000000
const FG_INVISIBLE = 0x40000000
const FG_STRIKETHROUGH = 0x80000000
const BG_ITALIC = 0x4000000
const BG_DIM = 0x8000000
const BG_HAS_EXTENDED = 0x10000000
const BG_PROTECTED = 0x20000000
const BG_OVERLINE = 0x40000000
const BG_FLAGS = 0xfc000000
const UNDERLINE_STYLE = 0x1c000000
const UNDERLINE_COLOR = 0x3ffffff
const WIDE_PROBE = "\u4e00"

/** What the pen applies to the next character. */
interface Pen {
  readonly fg: number
  readonly bg: number
  /** Underline style and colour bits (xterm.js `ExtendedAttrs._ext`). */
  readonly ext: number
  readonly link: string
}

const defaultPen: Pen = { fg: 0, bg: 0, ext: 0, link: "" }

const rgb = (value: number, extended: number) =>
  `${extended};2;${(value >>> 16) & 0xff};${(value >>> 8) & 0xff};${value & 0xff}`

const colour = (value: number, base: number, bright: number, extended: number): string => {
  // A palette colour set over a true colour keeps the latter's upper bits in xterm.js: so here.
  const over = (value & 0xffff00) !== 0 ? `${rgb(value, extended)};` : ""
  switch (value & CM_MASK) {
    case CM_P16: {
      const index = value & 0xff
      return over + String(index & 8 ? bright + (index & 7) : base + (index & 7))
    }
    case CM_P256:
      return `${over}${extended};5;${value & 0xff}`
    case CM_RGB:
      return rgb(value, extended)
    default:
      return ""
  }
}

/** `CSI 0;… m` (and DECSCA) that sets exactly `fg`, `bg` and the underline bits of `ext`. */
const sgr = (fg: number, bg: number, ext: number): string => {
  const params = ["0"]
  const push = (part: string) => {
    if (part !== "") params.push(part)
  }
  push(colour(fg, 30, 90, 38))
  push(colour(bg, 40, 100, 48))
  if (fg & FG_BOLD) params.push("1")
  if (bg & BG_DIM) params.push("2")
  if (bg & BG_ITALIC) params.push("3")
  if (fg & FG_UNDERLINE) params.push(`4:${Math.max(1, (ext & UNDERLINE_STYLE) >>> 26)}`)
  if (fg & FG_BLINK) params.push("5")
  if (fg & FG_INVERSE) params.push("7")
  if (fg & FG_INVISIBLE) params.push("8")
  if (fg & FG_STRIKETHROUGH) params.push("9")
  if (bg & BG_OVERLINE) params.push("53")
  const underline = ext & UNDERLINE_COLOR
  const trueUnderline = `58:2::${(underline >>> 16) & 0xff}:${(underline >>> 8) & 0xff}:${underline & 0xff}`
  if ((underline & CM_MASK) === CM_RGB) params.push(trueUnderline)
  else if ((underline & CM_MASK) !== 0) {
    if ((underline & 0xffff00) !== 0) params.push(trueUnderline)
    params.push(`58:5:${underline & 0xff}`)
  } else if (underline !== 0) params.push(trueUnderline, "58:5:0")
  return `\x1b[${params.join(";")}m${bg & BG_PROTECTED ? '\x1b[1"q' : ""}`
}

/** A cell erase (ECH) can make: no content, no foreground, a background without flags. */
const erasable = (cell: Cell) => cell.fg === 0 && (cell.bg & BG_FLAGS) >>> 0 === 0

const isEmpty = (cell: Cell) => cell.getChars() === "" && cell.getWidth() === 1

class Writer {
  private readonly parts: Array<string> = []
  private pen: Pen = defaultPen
  /** Row on the screen and column of the cursor; `x === cols` waits to wrap. */
  private row = 0
  private x = 0
  /** What a blank cell of the current row holds: the background the row was created with. */
  private fill = 0

  constructor(
    private readonly cols: number,
    private readonly rows: number,
    private readonly core: Core,
    private readonly scratch: Cell
  ) {}

  text(): string {
    return this.parts.join("")
  }

  raw(data: string): void {
    this.parts.push(data)
  }

  resetPen(): void {
    if (this.pen !== defaultPen) this.raw("\x1b[0m")
    this.setLink("")
    this.pen = defaultPen
  }

  private setLink(link: string): void {
    if (link === this.pen.link) return
    this.raw(link === "" ? "\x1b]8;;\x1b\\" : link)
  }

  private penOf(cell: Cell): Pen {
    const extended = (cell.bg & BG_HAS_EXTENDED) !== 0
    return {
      fg: cell.fg,
      bg: cell.bg,
      ext: extended ? cell.extended._ext & (UNDERLINE_STYLE | UNDERLINE_COLOR) : 0,
      link: extended ? this.linkOf(cell.extended._urlId) : ""
    }
  }

  private linkOf(urlId: number): string {
    if (urlId === 0) return ""
    const data = this.core._oscLinkService.getLinkData(urlId)
    if (data === undefined) return ""
    // A link without an id is registered anew on each open: cells of one such link split across
    // runs get distinct ids here (they still share the URI).
    return `\x1b]8;${data.id !== undefined ? `id=${data.id}` : ""};${data.uri}\x1b\\`
  }

  private setPen(pen: Pen): void {
    if (pen.fg !== this.pen.fg || pen.bg !== this.pen.bg || pen.ext !== this.pen.ext) {
      this.raw(sgr(pen.fg, pen.bg, pen.ext))
    }
    this.setLink(pen.link)
    this.pen = pen
  }

  private column(x: number): void {
    if (this.x === x) return
    this.raw(`\x1b[${x + 1}G`)
    this.x = x
  }

  private print(cell: Cell): void {
    this.setPen(this.penOf(cell))
    this.raw(cell.getChars())
    this.x = Math.min(this.cols, this.x + cell.getWidth())
  }

  /** Makes cell `x` of the current row exactly `cell`, which is empty. */
  private empty(x: number, cell: Cell, count: number): void {
    this.column(x)
    if (erasable(cell) || x + 1 >= this.cols) {
      // A blank with a foreground or flags (left where a wide character was overwritten) in the
      // last column is made a plain blank of its background.
      this.setPen({ ...this.pen, fg: this.pen.fg, bg: cell.bg & ~BG_FLAGS, ext: this.pen.ext })
      this.raw(count === 1 ? "\x1b[X" : `\x1b[${count}X`)
      return
    }
    // Printing into the right half of a wide character blanks its left half with the pen.
    this.setPen(defaultPen)
    this.raw(WIDE_PROBE)
    this.x = x + 2
    this.column(x + 1)
    this.setPen(this.penOf(cell))
    this.raw(" ")
    this.x = x + 2
  }

  /**
   * Makes the last cell of the row `cell`, a blank with a foreground or flags: a wide character over
   * the last two cells, then a character printed over its left half blanks the right half with the
   * pen. The cells on its left are written again.
   */
  private lastBlank(line: Line, cell: Cell, scratch: Cell): void {
    const pen = this.penOf(cell)
    this.column(this.cols - 2)
    this.setPen(defaultPen)
    this.raw(WIDE_PROBE)
    this.x = this.cols
    this.column(this.cols - 2)
    this.setPen(pen)
    this.raw(" ")
    this.x = this.cols - 1
    const left = line.loadCell(this.cols - 2, scratch).getWidth() === 0 ? this.cols - 3 : this.cols - 2
    this.x = -1
    this.cells(line, left, scratch, this.cols - 1, this.cols - 1)
  }

  /** Writes cells from `from` on; `dirty` cells are written even when they look blank. */
  private cells(line: Line, from: number, scratch: Cell, dirty: number, to = this.cols): void {
    for (let x = from; x < to; x++) {
      const cell = line.loadCell(x, scratch)
      if (cell.getWidth() === 0) continue
      if (isEmpty(cell)) {
        if (x >= dirty && cell.fg === 0 && cell.bg === this.fill) continue
        if (!erasable(cell) && x + 1 < this.cols) {
          this.empty(x, cell, 1)
          // The cell to its right was used and must be written again.
          dirty = Math.max(dirty, x + 2)
          continue
        }
        if (!erasable(cell) && this.cols >= 3) {
          this.lastBlank(line, cell, scratch)
          continue
        }
        let count = 1
        const { fg, bg } = cell
        while (x + count < this.cols) {
          const next = line.loadCell(x + count, scratch)
          if (!isEmpty(next) || next.fg !== fg || next.bg !== bg) break
          count++
        }
        this.empty(x, line.loadCell(x, scratch), count)
        x += count - 1
        continue
      }
      this.column(x)
      this.print(cell)
    }
  }

  /** Prints the last cell of the current row again, so the cursor waits to wrap after it. */
  private pendingWrap(line: Line, scratch: Cell): boolean {
    const last = line.loadCell(this.cols - 1, scratch)
    if (last.getWidth() === 0 && this.cols >= 2) {
      this.column(this.cols - 2)
      this.print(line.loadCell(this.cols - 2, scratch))
      return true
    }
    if (isEmpty(last)) return false
    this.column(this.cols - 1)
    this.print(last)
    return true
  }

  /** The lines of `buffer` (the newest `scrollbackLines` of its scrollback, or all). */
  buffer(buffer: Buffer, scrollbackLines: number | undefined): void {
    const scratch = this.scratch
    const total = buffer.lines.length
    const keep =
      scrollbackLines === undefined ? total : Math.min(total, this.rows + Math.max(0, scrollbackLines))
    const first = total - keep
    this.raw("\x1b[H")
    this.row = 0
    this.x = 0
    this.fill = 0
    for (let index = first; index < total; index++) {
      const line = buffer.lines.get(index)
      if (line === undefined) continue
      const next = index + 1 < total ? buffer.lines.get(index + 1) : undefined
      if (index > first) {
        if (line.isWrapped) this.wrapInto(buffer, index, scratch)
        else {
          if (this.pen.bg !== 0) this.resetPen()
          this.raw("\r\n")
          this.fill = 0
          this.x = 0
          this.row = Math.min(this.rows - 1, this.row + 1)
          this.cells(line, 0, scratch, 0)
        }
      } else {
        this.cells(line, 0, scratch, 0)
      }
      if (next?.isWrapped === true && this.x !== this.cols && !this.pendingWrap(line, scratch)) {
        // The last cell is blank: a placeholder makes the wrap, and is blanked after it.
        this.column(this.cols - 1)
        this.setPen(defaultPen)
        this.raw(" ")
        this.x = this.cols
      }
    }
  }

  /** Goes on to line `index`, a continuation of the one before, and writes it. */
  private wrapInto(buffer: Buffer, index: number, scratch: Cell): void {
    const line = buffer.lines.get(index)
    const previous = buffer.lines.get(index - 1)
    if (line === undefined || previous === undefined) return
    const scrolls = this.row === this.rows - 1
    const first = line.loadCell(0, scratch)
    if (isEmpty(first)) {
      this.setPen(defaultPen)
      this.raw(" ")
    } else {
      this.print(first)
    }
    this.fill = scrolls ? this.pen.bg & ~BG_FLAGS : 0
    this.row = Math.min(this.rows - 1, this.row + 1)
    this.x = Math.min(this.cols, first.getWidth() === 0 ? 1 : Math.max(1, first.getWidth()))
    // The placeholder of a blank last cell above goes again.
    const last = previous.loadCell(this.cols - 1, scratch)
    if (isEmpty(last)) {
      this.raw("\x1b[A")
      this.x = -1
      this.cells(previous, this.cols - 1, scratch, this.cols)
      this.raw("\x1b[B")
      this.x = -1
    }
    this.cells(line, isEmpty(first) ? 0 : 1, scratch, isEmpty(first) ? 1 : 0)
  }

  /** Puts the cursor where `buffer` has it; a cursor waiting to wrap waits again. */
  cursor(buffer: Buffer): void {
    const row = Math.min(buffer.y, this.rows - 1)
    if (buffer.x >= this.cols) {
      const line = buffer.lines.get(buffer.ybase + row)
      this.raw(`\x1b[${row + 1};1H`)
      this.x = 0
      if (line !== undefined && this.pendingWrap(line, this.scratch)) return
    }
    this.raw(`\x1b[${row + 1};${Math.min(buffer.x, this.cols - 1) + 1}H`)
    this.x = Math.min(buffer.x, this.cols - 1)
  }

  /** The saved cursor, tab stops and scroll region of `buffer`, which is active. */
  bufferState(buffer: Buffer): void {
    const saved = buffer.savedCurAttrData
    const savedRow = Math.max(0, Math.min(this.rows - 1, buffer.savedY - buffer.ybase))
    if (
      buffer.savedX !== 0 ||
      savedRow !== 0 ||
      saved.fg !== 0 ||
      saved.bg !== 0 ||
      buffer.savedCharset !== undefined
    ) {
      this.raw(`\x1b[${savedRow + 1};${Math.min(buffer.savedX, this.cols - 1) + 1}H`)
      this.raw(sgr(saved.fg, saved.bg & ~BG_HAS_EXTENDED, saved.fg & FG_UNDERLINE ? 1 << 26 : 0))
      const designator = charsetDesignator(buffer.savedCharset)
      this.raw(designator === "B" ? "\x1b7" : `\x1b(${designator}\x0f\x1b7\x1b(B`)
      this.pen = { fg: -1, bg: -1, ext: -1, link: this.pen.link }
    }
    let defaultTabs = true
    for (let x = 0; x < this.cols; x++) if ((buffer.tabs[x] === true) !== (x % 8 === 0)) defaultTabs = false
    if (!defaultTabs) {
      this.raw("\x1b[3g")
      for (let x = 0; x < this.cols; x++) if (buffer.tabs[x] === true) this.raw(`\x1b[${x + 1}G\x1bH`)
    }
    if (buffer.scrollTop !== 0 || buffer.scrollBottom !== this.rows - 1) {
      this.raw(`\x1b[${buffer.scrollTop + 1};${buffer.scrollBottom + 1}r`)
    }
    this.x = -1
  }

  /** The cursor of the active buffer, the character sets, the modes, the pen and the titles. */
  finalState(active: Buffer): void {
    const core = this.core
    const modes = core.coreService.decPrivateModes
    if (modes.origin) {
      this.raw("\x1b[?6h")
      const row = Math.max(0, active.y - active.scrollTop)
      if (active.x >= this.cols) {
        const line = active.lines.get(active.ybase + active.y)
        this.raw(`\x1b[${row + 1};1H`)
        this.x = 0
        if (line === undefined || !this.pendingWrap(line, this.scratch)) {
          this.raw(`\x1b[${row + 1};${this.cols}H`)
        }
      } else this.raw(`\x1b[${row + 1};${active.x + 1}H`)
    } else {
      this.cursor(active)
    }
    const charsets = core._charsetService._charsets
    const designators = ["(", ")", "*", "+"]
    for (let g = 0; g < 4; g++) {
      const designator = charsetDesignator(charsets[g])
      if (designator !== "B") this.raw(`\x1b${designators[g]}${designator}`)
    }
    const glevel = core._charsetService.glevel
    if (glevel === 1) this.raw("\x0e")
    else if (glevel === 2) this.raw("\x1bn")
    else if (glevel === 3) this.raw("\x1bo")
    const set: Array<number> = []
    const reset: Array<number> = []
    if (modes.applicationCursorKeys) set.push(1)
    if (core.optionsService.rawOptions.cursorBlink) set.push(12)
    if (modes.reverseWraparound) set.push(45)
    if (modes.applicationKeypad) set.push(66)
    if (modes.sendFocus) set.push(1004)
    if (modes.bracketedPasteMode) set.push(2004)
    if (modes.synchronizedOutput) set.push(2026)
    if (!modes.wraparound) reset.push(7)
    if (core.coreService.isCursorHidden) reset.push(25)
    const mouse: Record<string, number> = { X10: 9, VT200: 1000, DRAG: 1002, ANY: 1003 }
    const protocol = mouse[core.coreMouseService.activeProtocol]
    if (protocol !== undefined) set.push(protocol)
    const encoding = core.coreMouseService.activeEncoding
    if (encoding === "SGR") set.push(1006)
    else if (encoding === "SGR_PIXELS") set.push(1016)
    if (set.length > 0) this.raw(`\x1b[?${set.join(";")}h`)
    if (reset.length > 0) this.raw(`\x1b[?${reset.join(";")}l`)
    const ansi: Array<number> = []
    if (core.coreService.modes.insertMode) ansi.push(4)
    if (core.optionsService.rawOptions.convertEol) ansi.push(20)
    if (ansi.length > 0) this.raw(`\x1b[${ansi.join(";")}h`)
    if (modes.cursorStyle !== undefined) {
      const code = modes.cursorStyle === "block" ? 2 : modes.cursorStyle === "underline" ? 4 : 6
      this.raw(`\x1b[${modes.cursorBlink === true ? code - 1 : code} q`)
    }
    const pen = core._inputHandler._curAttrData
    this.raw(sgr(pen.fg, pen.bg, pen.extended._ext & (UNDERLINE_STYLE | UNDERLINE_COLOR)))
    // A restored cursor (ESC 8) leaves the link in the pen dormant: then it is not opened.
    this.setLink(pen.bg & BG_HAS_EXTENDED ? this.linkOf(pen.extended._urlId) : "")
    const input = core._inputHandler
    for (const title of input._windowTitleStack) this.raw(`\x1b]2;${clean(title)}\x1b\\\x1b[22;2t`)
    for (const icon of input._iconNameStack) this.raw(`\x1b]1;${clean(icon)}\x1b\\\x1b[22;1t`)
    if (input._windowTitleStack.length > 0 || input._windowTitle !== "")
      this.raw(`\x1b]2;${clean(input._windowTitle)}\x1b\\`)
    if (input._iconNameStack.length > 0 || input._iconName !== "")
      this.raw(`\x1b]1;${clean(input._iconName)}\x1b\\`)
  }
}

// eslint-disable-next-line no-control-regex
const clean = (text: string) => text.replace(/[\x00-\x1f\x7f-\x9f]/g, "")

/** The designator (`ESC ( X`) of each character set xterm.js knows, found by asking it once. */
let designators: Map<Charset | undefined, string> | undefined

const charsetDesignator = (charset: Charset | undefined): string => {
  if (charset === undefined) return "B"
  if (designators === undefined) {
    designators = new Map()
    const probe = new Headless.Terminal({ cols: 10, rows: 2, allowProposedApi: true })
    const core = internals(probe)
    for (const final of ["0", "A", "4", "C", "5", "R", "Q", "K", "Y", "E", "6", "Z", "H", "7", "=", "`"]) {
      core._inputHandler.parse(`\x1b(${final}`)
      const found = core._charsetService._charsets[0]
      if (found !== undefined && !designators.has(found)) designators.set(found, final)
    }
    probe.dispose()
  }
  return designators.get(charset) ?? "B"
}
