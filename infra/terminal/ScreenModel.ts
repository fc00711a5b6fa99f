/**
 * The server-side screen of a terminal session: a headless xterm.js fed the session's output, which
 * can be serialized at any time into the bytes that redraw the same screen in another terminal.
 */
// Both packages are CommonJS bundles without an `exports` map: Node gives ESM only their
// `module.exports` as the default export (the named `Terminal` is not detectable), so import that.
import Unicode11 from "@xterm/addon-unicode11"
import Headless from "@xterm/headless"
import type { Terminal } from "@xterm/headless"
import { Effect, Either, Option } from "effect"
import * as Colours from "./Colours.js"
import * as ScreenSerializer from "./ScreenSerializer.js"
import { Scanner } from "./Sequences.js"

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
  /**
   * Called with the answer to each query the program sends (device attributes, cursor position,
   * modes, colours, size), as a real xterm of this size would give it: write it to the program.
   */
  readonly onReply?: (reply: string) => void
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
      const tail = terminal.tail()
      return yield* terminal.run(empty, () =>
        terminal.take({ scrollbackLines: options.scrollbackLines }, tail)
      )
    })
  )

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const empty = new Uint8Array(0)

interface Opened {
  readonly xterm: Terminal
  /** Queues data without waiting for it to be parsed. */
  readonly queue: (data: Uint8Array) => void
  /** Queues data and waits until it is parsed, with what `after` returned then. */
  readonly run: <A>(data: Uint8Array, after: () => A) => Effect.Effect<A>
  /** The bytes of a sequence or character the data queued so far leaves unfinished. */
  readonly tail: () => Uint8Array
  /** The screen now, with `tail` (taken when the snapshot was asked for) appended to its redraw. */
  readonly take: (options: SnapshotOptions, tail: Uint8Array) => Snapshot
  /** Where the answers to the program's queries go (nowhere until set). */
  readonly replies: { send: (reply: string) => void }
}

const open = (cols: number, rows: number, scrollback: number) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      // `buffer`, which serialization reads, is "proposed" API in @xterm/headless. The window
      // options are the ones a real xterm allows by default: the size report and the title stack.
      const xterm = new Headless.Terminal({
        cols,
        rows,
        scrollback,
        allowProposedApi: true,
        windowOptions: {
          getWinSizeChars: true,
          pushTitle: true,
          popTitle: true,
          // Answered by `answerBeyondXterm` (xterm.js gates its handlers on these).
          getWinSizePixels: true,
          getScreenSizePixels: true,
          getCellSizePixels: true,
          getScreenSizeChars: true,
          getWinState: true,
          getWinPosition: true
        }
      })
      // Unicode 11 widths (emoji take two columns), as in the browser terminal and modern programs.
      xterm.loadAddon(new Unicode11.Unicode11Addon())
      xterm.unicode.activeVersion = "11"
      const replies = { send: (_reply: string): void => undefined }
      xterm.onData((reply) => replies.send(reply))
      const colours = Colours.track(xterm, (reply) => replies.send(reply))
      answerBeyondXterm(xterm, (reply) => replies.send(reply))
      const state = { title: "", closed: false }
      xterm.onTitleChange((title) => {
        state.title = title
      })
      const scanner = new Scanner()
      const queue = (data: Uint8Array) => {
        scanner.scan(data)
        xterm.write(data)
      }
      const run = <A>(data: Uint8Array, after: () => A) =>
        Effect.async<A>((resume) => {
          // A disposed terminal never calls back: fail loudly rather than hang.
          if (state.closed) return resume(Effect.dieMessage("ScreenModel used after its scope closed"))
          scanner.scan(data)
          // xterm.js runs a write's callback right after its chunk, before any later chunk.
          xterm.write(data, () => resume(Effect.orDie(Either.try(after))))
        })
      const take = (options: SnapshotOptions, tail: Uint8Array) =>
        snapshotOf(xterm, state.title, options, colours.serialize() + decoder.decode(tail))
      const opened: Opened = { xterm, queue, run, tail: () => scanner.tail(), take, replies }
      return { opened, state }
    }),
    ({ opened, state }) =>
      Effect.sync(() => {
        state.closed = true
        opened.xterm.dispose()
      })
  ).pipe(Effect.map(({ opened }) => opened))

/** The cell size, in pixels, answered for pixel-size queries: the screen has no pixels of its own. */
export const nominalCell = { width: 8, height: 16 } as const

/**
 * Queries a real xterm answers and xterm.js does not: its name and version (XTVERSION), the
 * window's state and position (`CSI 11 t`, `13 t`), the sizes in pixels (`CSI 14 t`, `15 t`,
 * `16 t`) and the screen's in characters (`CSI 19 t`). A
 * program that asks waits for the answer, so the server gives one (pixels from a nominal cell),
 * in order with the answers xterm.js gives. (xterm.js calls a handler of `CSI t` only for the
 * operations its `windowOptions` allow: `open` allows these.)
 */
const answerBeyondXterm = (xterm: Terminal, send: (reply: string) => void) => {
  xterm.parser.registerCsiHandler({ prefix: ">", final: "q" }, (params) => {
    if ((params[0] ?? 0) !== 0) return false
    send("\x1bP>|vibes\x1b\\")
    return true
  })
  xterm.parser.registerCsiHandler({ final: "t" }, (params) => {
    const height = xterm.rows * nominalCell.height
    const width = xterm.cols * nominalCell.width
    switch (params[0]) {
      case 11:
        // Not iconified.
        send("\x1b[1t")
        return true
      case 13:
        send("\x1b[3;0;0t")
        return true
      case 14:
        send(`\x1b[4;${height};${width}t`)
        return true
      case 15:
        send(`\x1b[5;${height};${width}t`)
        return true
      case 16:
        send(`\x1b[6;${nominalCell.height};${nominalCell.width}t`)
        return true
      case 19:
        send(`\x1b[9;${xterm.rows};${xterm.cols}t`)
        return true
      default:
        return false
    }
  })
}

const hooked = (terminal: Opened, options: Omit<Options, "cols" | "rows">): ScreenModel => {
  const { onBell, onTitle, onReply } = options
  if (onBell !== undefined) terminal.xterm.onBell(() => onBell())
  if (onTitle !== undefined) terminal.xterm.onTitleChange((title) => onTitle(title))
  if (onReply !== undefined) terminal.replies.send = onReply
  return {
    write: (data) => terminal.run(data, () => undefined),
    feed: (data) => terminal.queue(data),
    resize: (cols, rows) => terminal.run(empty, () => terminal.xterm.resize(cols, rows)),
    snapshot: (options) =>
      Effect.suspend(() => {
        const tail = terminal.tail()
        return terminal.run(empty, () => terminal.take(options ?? {}, tail))
      })
  }
}

const snapshotOf = (xterm: Terminal, title: string, options: SnapshotOptions, after: string): Snapshot => {
  const buffer = xterm.buffer.active
  const lines: Array<string> = []
  for (let y = 0; y < xterm.rows; y++) {
    lines.push((buffer.getLine(buffer.baseY + y)?.translateToString(true) ?? "").trimEnd())
  }
  const scrollbackLines =
    options.scrollbackLines === undefined ? undefined : Math.max(0, Math.floor(options.scrollbackLines))
  return {
    cols: xterm.cols,
    rows: xterm.rows,
    vt: ScreenSerializer.serialize(xterm, { scrollbackLines }) + after,
    text: lines.join("\n"),
    cursor: { x: buffer.cursorX, y: buffer.cursorY },
    altScreen: buffer.type === "alternate",
    title
  }
}
