/**
 * Reference terminals for screen tests: plain headless xterm.js terminals set up like vibes' screen
 * model (Unicode 11, the window options of a real xterm), and a dump of everything one shows or
 * will apply to later output, cell by cell and mode by mode, to compare two of them.
 */
import Unicode11 from "@xterm/addon-unicode11"
import Headless from "@xterm/headless"
import type { Terminal } from "@xterm/headless"
import { Effect } from "effect"

/** A reference terminal, disposed with the scope. */
export const reference = (cols: number, rows: number, scrollback = 1000) =>
  Effect.acquireRelease(
    Effect.sync(() => make(cols, rows, scrollback)),
    (terminal) => Effect.sync(() => terminal.dispose())
  )

/** A reference terminal the caller disposes. */
export const make = (cols: number, rows: number, scrollback = 1000): Terminal => {
  const terminal = new Headless.Terminal({
    cols,
    rows,
    scrollback,
    allowProposedApi: true,
    windowOptions: { getWinSizeChars: true, pushTitle: true, popTitle: true }
  })
  terminal.loadAddon(new Unicode11.Unicode11Addon())
  terminal.unicode.activeVersion = "11"
  return terminal
}

/** Writes `data` and waits until it is parsed. */
export const feed = (terminal: Terminal, data: string | Uint8Array) =>
  Effect.async<void>((resume) => terminal.write(data, () => resume(Effect.void)))

const field = (value: unknown, key: string): unknown =>
  typeof value === "object" && value !== null ? Reflect.get(value, key) : undefined

const number = (value: unknown): number => (typeof value === "number" ? value : -1)

/** Identifies a character set object by the designator that selects it (read on a probe terminal). */
const charsetName = (() => {
  let names: Map<unknown, string> | undefined
  return (charset: unknown): string => {
    if (charset === undefined || charset === null) return "B"
    if (names === undefined) {
      names = new Map()
      const probe = make(10, 2)
      const parse = field(field(probe, "_core"), "_inputHandler")
      const service = field(field(probe, "_core"), "_charsetService")
      for (const final of ["0", "A", "4", "C", "5", "R", "Q", "K", "Y", "E", "6", "Z", "H", "7", "=", "`"]) {
        const handler = field(parse, "parse")
        if (typeof handler === "function") Reflect.apply(handler, parse, [`\x1b(${final}`])
        const found = field(field(service, "_charsets"), "0")
        if (found !== undefined && !names.has(found)) names.set(found, final)
      }
      probe.dispose()
    }
    return names.get(charset) ?? "?"
  }
})()

/**
 * Everything `terminal` shows or will apply to later output: every cell of both buffers with all
 * its attribute bits (hyperlinks by URI and id), wrapped lines, cursors, saved cursors, scroll
 * regions, tab stops, the pen, character sets, modes and titles.
 */
export const dump = (terminal: Terminal) => {
  const core = field(terminal, "_core")
  const buffers = field(field(core, "_bufferService"), "buffers")
  const links = field(core, "_oscLinkService")
  const linkOf = (urlId: number): unknown => {
    if (urlId === 0) return null
    const getLinkData = field(links, "getLinkData")
    const data: unknown =
      typeof getLinkData === "function" ? Reflect.apply(getLinkData, links, [urlId]) : undefined
    // A link whose lines all scrolled away is forgotten: cells and pen still carry its number.
    return data === undefined ? null : { uri: field(data, "uri"), id: field(data, "id") ?? null }
  }
  const attrs = (fg: number, bg: number, extended: unknown) => {
    const hasExtended = (bg & 0x10000000) !== 0
    const link = hasExtended ? linkOf(number(field(extended, "_urlId"))) : null
    // An underline style without the underline flag (left dormant by a restored cursor) draws nothing.
    const ext = number(field(extended, "_ext")) & ((fg & 0x10000000) !== 0 ? 0x1fffffff : 0x3ffffff)
    const kept = hasExtended && ((ext & 0x1c000000) !== 0 || link !== null)
    return {
      fg: fg >>> 0,
      // Whether extended attributes are stored follows from the underline style and the link.
      bg: (bg & ~0x10000000) >>> 0,
      ext: kept ? ext & 0x1fffffff : 0,
      link
    }
  }
  const lines = (which: "normal" | "alt") => {
    const buffer = field(buffers, which)
    const list = field(buffer, "lines")
    const length = number(field(list, "length"))
    const get = field(list, "get")
    const cell = terminal.buffer.active.getNullCell()
    const out: Array<unknown> = []
    for (let y = 0; y < length; y++) {
      const line: unknown = typeof get === "function" ? Reflect.apply(get, list, [y]) : undefined
      const loadCell = field(line, "loadCell")
      if (typeof loadCell !== "function") continue
      const cells: Array<unknown> = []
      for (let x = 0; x < terminal.cols; x++) {
        Reflect.apply(loadCell, line, [x, cell])
        cells.push([
          cell.getChars(),
          cell.getWidth(),
          attrs(number(field(cell, "fg")), number(field(cell, "bg")), field(cell, "extended"))
        ])
      }
      out.push({ y, wrapped: field(line, "isWrapped"), cells })
    }
    return out
  }
  const state = (which: "normal" | "alt") => {
    const buffer = field(buffers, which)
    const ybase = number(field(buffer, "ybase"))
    const saved = field(buffer, "savedCurAttrData")
    const tabs = field(buffer, "tabs")
    const stops: Array<number> = []
    for (let x = 0; x < terminal.cols; x++) if (field(tabs, String(x)) === true) stops.push(x)
    return {
      ybase,
      x: field(buffer, "x"),
      y: field(buffer, "y"),
      scrollRegion: [field(buffer, "scrollTop"), field(buffer, "scrollBottom")],
      saved: {
        x: Math.min(number(field(buffer, "savedX")), terminal.cols - 1),
        y: Math.max(0, number(field(buffer, "savedY")) - ybase),
        fg: number(field(saved, "fg")) >>> 0,
        bg: (number(field(saved, "bg")) & ~0x10000000) >>> 0,
        charset: charsetName(field(buffer, "savedCharset"))
      },
      tabs: stops
    }
  }
  const coreService = field(core, "coreService")
  const mouse = field(core, "coreMouseService")
  const charsets = field(core, "_charsetService")
  const input = field(core, "_inputHandler")
  const pen = field(input, "_curAttrData")
  const options = field(field(core, "optionsService"), "rawOptions")
  const altActive = field(buffers, "active") === field(buffers, "alt")
  return {
    size: { cols: terminal.cols, rows: terminal.rows },
    active: altActive ? "alt" : "normal",
    normal: { ...state("normal"), lines: lines("normal") },
    alt: altActive ? { ...state("alt"), lines: lines("alt") } : null,
    modes: field(coreService, "decPrivateModes"),
    insertMode: field(field(coreService, "modes"), "insertMode"),
    cursorHidden: field(coreService, "isCursorHidden"),
    cursorBlink: field(options, "cursorBlink"),
    convertEol: field(options, "convertEol"),
    mouse: [field(mouse, "activeProtocol"), field(mouse, "activeEncoding")],
    pen: {
      ...attrs(number(field(pen, "fg")), number(field(pen, "bg")), field(pen, "extended")),
      underlineColor: number(field(field(pen, "extended"), "_ext")) & 0x3ffffff
    },
    charsets: {
      g: [0, 1, 2, 3].map((g) => charsetName(field(field(charsets, "_charsets"), String(g)))),
      glevel: field(charsets, "glevel"),
      active: charsetName(field(charsets, "charset"))
    },
    title: [field(input, "_windowTitle"), field(input, "_iconName")],
    titleStacks: [field(input, "_windowTitleStack"), field(input, "_iconNameStack")]
  }
}
