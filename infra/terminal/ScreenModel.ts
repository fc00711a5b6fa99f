/**
 * The server-side screen of a terminal session: a headless xterm.js fed the session's output, which
 * can be serialized at any time into the bytes that redraw the same screen in another terminal.
 */
// Both packages are CommonJS bundles without an `exports` map: Node gives ESM only their
// `module.exports` as the default export (the named `Terminal` is not detectable), so import that.
import Serialize from "@xterm/addon-serialize"
import Unicode11 from "@xterm/addon-unicode11"
import Headless from "@xterm/headless"
import type { Terminal } from "@xterm/headless"
import { Effect, Either, Option } from "effect"

/** A size and the serialized bytes that redraw a screen in a fresh terminal of that size. */
export interface Base {
  readonly cols: number
  readonly rows: number
  readonly vt: string
}

/** The screen at one moment. */
export interface Snapshot extends Base {
  /** The visible screen as plain text, one line a row, trailing spaces trimmed. */
  readonly text: string
  /** Cursor position on the visible screen, 0-based. */
  readonly cursor: { readonly x: number; readonly y: number }
  readonly altScreen: boolean
  readonly title: string
}

/** What a snapshot holds beyond the visible screen. */
export interface SnapshotOptions {
  /** How many scrollback lines `vt` keeps, the newest; all of them when absent. */
  readonly scrollbackLines?: number | undefined
}

/** The size of a new model, its scrollback in lines, and hooks for what the program signals. */
export interface Options {
  readonly cols: number
  readonly rows: number
  readonly scrollback: number
  /** Called on each BEL the program prints. */
  readonly onBell?: () => void
  /** Called when the program sets the window title. */
  readonly onTitle?: (title: string) => void
}

/** The screen of one terminal session. Operations apply in the order they are called. */
export interface ScreenModel {
  /** Feeds program output; resolves once it is parsed. UTF-8 may be split anywhere across calls. */
  readonly write: (data: Uint8Array) => Effect.Effect<void>
  /**
   * Queues program output without waiting for the parser (each wait costs a timer tick). Later
   * operations still see it; callers bound the backlog by awaiting `write` now and then.
   */
  readonly feed: (data: Uint8Array) => void
  /** Resizes the screen after everything written before. */
  readonly resize: (cols: number, rows: number) => Effect.Effect<void>
  /** The screen after everything written before. */
  readonly snapshot: (options?: SnapshotOptions) => Effect.Effect<Snapshot>
}

/** One step of a session's history. */
export type Output =
  { readonly data: Uint8Array } | { readonly resize: { readonly cols: number; readonly rows: number } }

/** A fresh, empty screen, disposed when the scope closes. */
export const make = (options: Options) =>
  Effect.map(open(options.cols, options.rows, options.scrollback), (terminal) => hooked(terminal, options))

/** A screen redrawn from `base`, sized like it; the hooks see only what is written afterwards. */
export const restore = (base: Base, options: Omit<Options, "cols" | "rows">) =>
  Effect.gen(function* () {
    const terminal = yield* open(base.cols, base.rows, options.scrollback)
    yield* terminal.run(encoder.encode(base.vt), () => undefined)
    return hooked(terminal, options)
  })

/**
 * The screen after `outputs`, starting from `base` (which brings its own size) or from an empty
 * screen of `cols` x `rows`.
 */
export const rebuild = (options: {
  readonly cols: number
  readonly rows: number
  readonly scrollback: number
  readonly base: Option.Option<Base>
  readonly outputs: Iterable<Output>
  /** As in `SnapshotOptions`. */
  readonly scrollbackLines?: number | undefined
}): Effect.Effect<Snapshot> =>
  Effect.scoped(
    Effect.gen(function* () {
      const terminal = yield* Option.match(options.base, {
        onNone: () => open(options.cols, options.rows, options.scrollback),
        onSome: (base) =>
          Effect.tap(open(base.cols, base.rows, options.scrollback), (terminal) =>
            terminal.queue(encoder.encode(base.vt))
          )
      })
      let pending = 0
      for (const output of options.outputs) {
        if ("data" in output) {
          // Queue without waiting (a wait costs a timer tick), staying well under the 50 MB of
          // unparsed data xterm.js accepts.
          terminal.queue(output.data)
          pending += output.data.length
          if (pending > 4_000_000) {
            yield* terminal.run(empty, () => undefined)
            pending = 0
          }
        } else {
          yield* terminal.run(empty, () => terminal.xterm.resize(output.resize.cols, output.resize.rows))
          pending = 0
        }
      }
      return yield* terminal.run(empty, () => terminal.take({ scrollbackLines: options.scrollbackLines }))
    })
  )

const encoder = new TextEncoder()
const empty = new Uint8Array(0)

interface Opened {
  readonly xterm: Terminal
  /** Queues data without waiting for it to be parsed. */
  readonly queue: (data: Uint8Array) => void
  /** Queues data and waits until it is parsed, with what `after` returned then. */
  readonly run: <A>(data: Uint8Array, after: () => A) => Effect.Effect<A>
  /** The screen now. */
  readonly take: (options: SnapshotOptions) => Snapshot
}

const open = (cols: number, rows: number, scrollback: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      // `buffer`, which serialization reads, is "proposed" API in @xterm/headless.
      const xterm = new Headless.Terminal({ cols, rows, scrollback, allowProposedApi: true })
      const serializer = new Serialize.SerializeAddon()
      xterm.loadAddon(serializer)
      // Unicode 11 widths (emoji take two columns), as in the browser terminal and modern programs.
      xterm.loadAddon(new Unicode11.Unicode11Addon())
      xterm.unicode.activeVersion = "11"
      const state = { title: "", closed: false }
      xterm.onTitleChange((title) => {
        state.title = title
      })
      const queue = (data: Uint8Array) => xterm.write(data)
      const run = <A>(data: Uint8Array, after: () => A) =>
        Effect.async<A>((resume) => {
          // A disposed terminal never calls back: fail loudly rather than hang.
          if (state.closed) return resume(Effect.dieMessage("ScreenModel used after its scope closed"))
          // xterm.js runs a write's callback right after its chunk, before any later chunk.
          xterm.write(data, () => resume(Effect.orDie(Either.try(after))))
        })
      const take = (options: SnapshotOptions) => snapshotOf(xterm, serializer, state.title, options)
      return { opened: { xterm, queue, run, take } satisfies Opened, state }
    }),
    ({ opened, state }) =>
      Effect.sync(() => {
        state.closed = true
        opened.xterm.dispose()
      })
  ).pipe(Effect.map(({ opened }) => opened))

const hooked = (terminal: Opened, options: Omit<Options, "cols" | "rows">): ScreenModel => {
  const { onBell, onTitle } = options
  if (onBell !== undefined) terminal.xterm.onBell(() => onBell())
  if (onTitle !== undefined) terminal.xterm.onTitleChange((title) => onTitle(title))
  return {
    write: (data) => terminal.run(data, () => undefined),
    feed: (data) => terminal.queue(data),
    resize: (cols, rows) => terminal.run(empty, () => terminal.xterm.resize(cols, rows)),
    snapshot: (options) => terminal.run(empty, () => terminal.take(options ?? {}))
  }
}

const snapshotOf = (
  xterm: Terminal,
  serializer: InstanceType<typeof Serialize.SerializeAddon>,
  title: string,
  options: SnapshotOptions
): Snapshot => {
  const buffer = xterm.buffer.active
  const lines: Array<string> = []
  for (let y = 0; y < xterm.rows; y++) {
    lines.push((buffer.getLine(buffer.baseY + y)?.translateToString(true) ?? "").trimEnd())
  }
  return {
    cols: xterm.cols,
    rows: xterm.rows,
    vt: vtOf(xterm, serializer, title, options.scrollbackLines),
    text: lines.join("\n"),
    cursor: { x: buffer.cursorX, y: buffer.cursorY },
    altScreen: buffer.type === "alternate",
    title
  }
}

/**
 * The serialize addon's output, completed with what it leaves out or gets wrong: the title, each
 * buffer's scroll region and exact cursor position (its relative moves land one column short after
 * a write to the last column, and its `?6h` homes the cursor), a hidden cursor and the cursor shape.
 */
const vtOf = (
  xterm: Terminal,
  serializer: InstanceType<typeof Serialize.SerializeAddon>,
  title: string,
  scrollbackLines: number | undefined
): string => {
  const serialized = serializer.serialize(
    scrollbackLines === undefined ? {} : { scrollback: Math.max(0, Math.floor(scrollbackLines)) }
  )
  const cursor = cursorState(xterm)
  // eslint-disable-next-line no-control-regex
  const head = title === "" ? "" : `\x1b]2;${title.replace(/[\x00-\x1f\x7f-\x9f]/g, "")}\x07`
  if (xterm.buffer.active.type === "normal") return head + serialized + bufferState(xterm, "normal") + cursor
  // The addon writes the normal buffer, then this, then the alternate screen and the modes; cells
  // never hold an escape, so the last occurrence is the switch.
  const at = serialized.lastIndexOf(alternateSwitch)
  const withNormal =
    at < 0 ? serialized : serialized.slice(0, at) + bufferState(xterm, "normal") + serialized.slice(at)
  return head + withNormal + bufferState(xterm, "alternate") + cursor
}

const alternateSwitch = "\x1b[?1049h\x1b[H"

/**
 * xterm.js keeps scroll regions, cursor visibility and shape only internally, so these read
 * `_core` defensively and emit nothing for what they cannot find; the tests pin the shape.
 */
const bufferState = (xterm: Terminal, which: "normal" | "alternate"): string => {
  const internal = field(field(field(xterm, "_core"), "buffers"), which === "normal" ? "normal" : "alt")
  const scrollTop = field(internal, "scrollTop")
  const scrollBottom = field(internal, "scrollBottom")
  const top = typeof scrollTop === "number" ? scrollTop : 0
  const bottom = typeof scrollBottom === "number" ? scrollBottom : xterm.rows - 1
  const region = top !== 0 || bottom !== xterm.rows - 1 ? `\x1b[${top + 1};${bottom + 1}r` : ""
  const buffer = xterm.buffer[which]
  // Past the last column the cursor waits to wrap, which only the addon's own moves reproduce.
  if (region === "" && buffer.cursorX >= xterm.cols) return ""
  // Origin mode is only on for the active buffer by now; it counts rows from the region's top.
  const origin = which === xterm.buffer.active.type && xterm.modes.originMode ? top : 0
  return `${region}\x1b[${buffer.cursorY - origin + 1};${Math.min(buffer.cursorX, xterm.cols - 1) + 1}H`
}

const cursorState = (xterm: Terminal): string => {
  const coreService = field(field(xterm, "_core"), "coreService")
  const modes = field(coreService, "decPrivateModes")
  const shape = field(modes, "cursorStyle")
  const code = shape === "block" ? 2 : shape === "underline" ? 4 : shape === "bar" ? 6 : 0
  const style = code === 0 ? "" : `\x1b[${field(modes, "cursorBlink") === true ? code - 1 : code} q`
  return field(coreService, "isCursorHidden") === true ? `${style}\x1b[?25l` : style
}

const field = (value: unknown, key: string): unknown =>
  typeof value === "object" && value !== null ? Reflect.get(value, key) : undefined
