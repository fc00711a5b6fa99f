import { describe, expect, it } from "@effect/vitest"
import Unicode11 from "@xterm/addon-unicode11"
import Headless from "@xterm/headless"
import type { Terminal } from "@xterm/headless"
import { Effect, Exit, Option, Scope } from "effect"
import * as ScreenModel from "../../../infra/terminal/ScreenModel.js"

const encoder = new TextEncoder()
const bytes = (text: string) => encoder.encode(text)

/** A plain headless terminal, the reference the model is checked against. */
const reference = (cols: number, rows: number, scrollback = 1000) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      // Like the browser's terminal: Unicode 11 widths.
      const terminal = new Headless.Terminal({ cols, rows, scrollback, allowProposedApi: true })
      terminal.loadAddon(new Unicode11.Unicode11Addon())
      terminal.unicode.activeVersion = "11"
      return terminal
    }),
    (terminal) => Effect.sync(() => terminal.dispose())
  )

const feed = (terminal: Terminal, data: string | Uint8Array) =>
  Effect.async<void>((resume) => terminal.write(data, () => resume(Effect.void)))

const field = (value: unknown, key: string): unknown =>
  typeof value === "object" && value !== null ? Reflect.get(value, key) : undefined

/** Everything a terminal shows or will apply to later output, cell by cell. */
const dump = (terminal: Terminal) => {
  const cell = terminal.buffer.active.getNullCell()
  const lines = (kind: "normal" | "alternate") => {
    const buffer = terminal.buffer[kind]
    const out: Array<unknown> = []
    for (let y = 0; y < buffer.length; y++) {
      const line = buffer.getLine(y)
      if (line === undefined) continue
      const cells: Array<unknown> = []
      for (let x = 0; x < terminal.cols; x++) {
        line.getCell(x, cell)
        cells.push([
          cell.getChars(),
          cell.getWidth(),
          cell.getFgColorMode(),
          cell.getFgColor(),
          cell.getBgColorMode(),
          cell.getBgColor(),
          cell.isBold(),
          cell.isItalic(),
          cell.isDim(),
          cell.isUnderline(),
          cell.isBlink(),
          cell.isInverse(),
          cell.isInvisible(),
          cell.isStrikethrough(),
          cell.isOverline()
        ])
      }
      out.push({ y, wrapped: line.isWrapped, cells })
    }
    return out
  }
  // Internal state the screen model restores beyond the serialize addon; read here to pin its shape.
  const core = field(terminal, "_core")
  const coreService = field(core, "coreService")
  const buffers = field(core, "buffers")
  const region = (buffer: unknown) => [field(buffer, "scrollTop"), field(buffer, "scrollBottom")]
  return {
    active: terminal.buffer.active.type,
    cursor: { x: terminal.buffer.active.cursorX, y: terminal.buffer.active.cursorY },
    size: { cols: terminal.cols, rows: terminal.rows },
    modes: terminal.modes,
    scrollRegions: [region(field(buffers, "normal")), region(field(buffers, "alt"))],
    cursorHidden: field(coreService, "isCursorHidden"),
    cursorStyle: [
      field(field(coreService, "decPrivateModes"), "cursorStyle"),
      field(field(coreService, "decPrivateModes"), "cursorBlink")
    ],
    normal: lines("normal"),
    alternate: terminal.buffer.active.type === "alternate" ? lines("alternate") : []
  }
}

const fill = (rows: number, cols: number) =>
  Array.from({ length: rows }, (_, y) => String.fromCharCode(65 + (y % 26)).repeat(cols)).join("\r\n")

interface Screen {
  readonly name: string
  readonly chunks: ReadonlyArray<string>
  /** Written to both terminals after the restore, to check state that is not on the screen. */
  readonly after: string
  readonly cols?: number
  readonly rows?: number
}

const screens: ReadonlyArray<Screen> = [
  {
    name: "SGR colours and attributes",
    chunks: [
      "\x1b[31mred\x1b[0m \x1b[1mbold\x1b[22m \x1b[4munder\x1b[24m \x1b[1;4;31;42mmixed\x1b[0m\r\n",
      "\x1b[38;5;196m256fg\x1b[48;5;21m256bg\x1b[0m \x1b[95mbright\x1b[0m\r\n",
      "\x1b[38;2;255;128;0mtrue\x1b[48;2;10;20;30mcolour\x1b[0m\r\n",
      "\x1b[3mital\x1b[23m \x1b[7minv\x1b[27m \x1b[9mstrike\x1b[29m \x1b[2mdim\x1b[22m \x1b[5mblink\x1b[25m",
      " \x1b[8mhidden\x1b[28m \x1b[53mover\x1b[55m\r\n\x1b[1;38;2;1;2;3;48;5;100m"
    ],
    after: "still styled\x1b[0m plain"
  },
  {
    name: "cursor movement",
    chunks: [
      "\x1b[2J\x1b[5;10HA\x1b[2AB\x1b[3CC\x1b[1BD\x1b[4DE\x1b[10GF\x1b[3;3fG",
      "\x1b[EH\x1b[FI\x1b[7dJ\x1b[200;200HK\x1b[HL\x1b7\x1b[12;40HM"
    ],
    after: "N\x1b[2;2HO"
  },
  {
    name: "erasing",
    chunks: [
      fill(12, 30),
      "\x1b[2;5H\x1b[K\x1b[3;5H\x1b[1K\x1b[4;5H\x1b[2K\x1b[5;5H\x1b[3X\x1b[6;5H\x1b[2P\x1b[7;5H\x1b[2@",
      "\x1b[8;1H\x1b[L\x1b[9;1H\x1b[M\x1b[44m\x1b[10;10H\x1b[K\x1b[0m\x1b[11;10H\x1b[J\x1b[1;10H\x1b[1J"
    ],
    after: "\x1b[10;1Hx\x1b[44m\x1b[1;1H\x1b[2X",
    cols: 30,
    rows: 12
  },
  {
    name: "a scroll region",
    chunks: [fill(12, 20), "\x1b[3;8r\x1b[8;1H\n\n\nscrolled\x1b[S\x1b[2T\x1b[3;1H\x1bMup\x1b[6;4H"],
    after: "\x1b[8;1H\n\nbelow\x1b[1;1H\x1bM\x1b[3;1H\x1bMtop",
    cols: 20,
    rows: 12
  },
  {
    name: "a scroll region in origin mode",
    chunks: [fill(12, 20), "\x1b[4;9r\x1b[?6h\x1b[2;3Hin region"],
    after: "\x1b[HX\x1b[20;1HY\n\nZ",
    cols: 20,
    rows: 12
  },
  {
    name: "the alternate screen",
    chunks: [
      "normal line 1\r\n\x1b[32mnormal line 2\x1b[0m\r\nprompt$ ",
      "\x1b[?1049h\x1b[2J\x1b[H\x1b[1;33malt content\x1b[10;5Hxy\x1b[0m\x1b[?25l\x1b[5 q"
    ],
    after: "more\x1b[?1049l\x1b[?25hback"
  },
  {
    name: "after leaving the alternate screen",
    chunks: ["before\r\nprompt$ ", "\x1b[?1049h\x1b[2Jfull screen app\x1b[?1049l", "after"],
    after: "\r\nnext"
  },
  {
    name: "scroll regions and the cursor of both buffers while the alternate screen is active",
    chunks: [
      fill(12, 20),
      "\x1b[2;10r\x1b[12;20HZ\x1b[5;5H",
      "\x1b[?1049h\x1b[3;6r\x1b[?6h\x1b[2;2Halt\x1b[4 q"
    ],
    after: "\x1b[HQ\n\n\n\nR\x1b[?6l\x1b[?1049l\n\n\n\n\n\n\n\nX",
    cols: 20,
    rows: 12
  },
  {
    name: "modes",
    chunks: ["\x1b[?1h\x1b[?66h\x1b[?2004h\x1b[?1002h\x1b[?1004h\x1b[4h\x1b[?7labc", "\x1b[1;3Hinsert"],
    after: "\x1b[1;1HXY" + "z".repeat(100)
  },
  {
    name: "wide characters, emoji and combining marks",
    chunks: ["日本語 テキスト\r\n🎉🚀 ok\r\ne\u0301 n\u0303\r\n", "表".repeat(45)],
    after: "末"
  },
  {
    name: "wrapped lines and a pending wrap",
    chunks: ["x".repeat(200), "\r\n", "y".repeat(80)],
    after: "z"
  },
  {
    name: "scrollback",
    chunks: [
      Array.from({ length: 300 }, (_, n) => `line ${n} \x1b[3${n % 8}m${"#".repeat(n % 70)}\x1b[0m`).join(
        "\r\n"
      )
    ],
    after: "\r\ntail"
  }
]

describe("ScreenModel", () => {
  for (const screen of screens) {
    it.scoped(
      `the attach snapshot renders the same screen as a reference terminal fed the raw bytes: ${screen.name}`,
      () =>
        Effect.gen(function* () {
          const cols = screen.cols ?? 80
          const rows = screen.rows ?? 24
          const model = yield* ScreenModel.make({ cols, rows, scrollback: 1000 })
          const raw = yield* reference(cols, rows)
          for (const chunk of screen.chunks) {
            yield* model.write(bytes(chunk))
            yield* feed(raw, chunk)
          }
          const snapshot = yield* model.snapshot()
          const restored = yield* reference(cols, rows)
          yield* feed(restored, snapshot.vt)
          expect(dump(restored)).toEqual(dump(raw))

          yield* feed(restored, screen.after)
          yield* feed(raw, screen.after)
          expect(dump(restored)).toEqual(dump(raw))
        })
    )
  }

  it.scoped("a snapshot leaves the model as it was: later erases and scrolls still fill with blanks", () =>
    Effect.gen(function* () {
      // The cursor waits to wrap after a full last row, so the snapshot reads its last cells; tmux
      // drew a screen like this, then erased lines, and they filled with the last cell read.
      const model = yield* ScreenModel.make({ cols: 10, rows: 3, scrollback: 10 })
      const raw = yield* reference(10, 3, 10)
      const before = "one\r\ntwo\r\n6666666666"
      yield* model.write(bytes(before))
      yield* feed(raw, before)
      yield* model.snapshot()
      // Erase to the end of a line, erase a whole line, then scroll a blank line in at the top.
      const after = "\x1b[1;1Hx\x1b[K\x1b[2;1H\x1b[K\x1b[3;1H\x1b[2K\x1b[T"
      yield* model.write(bytes(after))
      yield* feed(raw, after)
      const snapshot = yield* model.snapshot()
      expect(snapshot.text).toBe("\nx\n")
      const restored = yield* reference(10, 3, 10)
      yield* feed(restored, snapshot.vt)
      expect(dump(restored)).toEqual(dump(raw))
    })
  )

  it.scoped(
    "colours a program set (OSC 4, 10, 11, 12) survive a snapshot: a restored model answers with them",
    () =>
      Effect.gen(function* () {
        const set =
          "\x1b]4;1;rgb:12/34/56\x1b\\\x1b]10;rgb:aa/bb/cc\x07\x1b]11;rgb:ff/00/00\x1b\\\x1b]12;rgb:01/02/03\x07"
        const query = "\x1b]4;1;?\x07\x1b]10;?\x07\x1b]11;?\x07\x1b]12;?\x07"
        const answers = (replies: Array<string>) =>
          Effect.gen(function* () {
            const model = yield* ScreenModel.make({
              cols: 20,
              rows: 5,
              scrollback: 10,
              onReply: (r) => replies.push(r)
            })
            return model
          })
        const liveReplies: Array<string> = []
        const live = yield* answers(liveReplies)
        yield* live.write(new TextEncoder().encode(set))
        const snapshot = yield* live.snapshot()
        yield* live.write(new TextEncoder().encode(query))
        const restoredReplies: Array<string> = []
        const restored = yield* answers(restoredReplies)
        yield* restored.write(new TextEncoder().encode(snapshot.vt))
        // Restoring answers nothing by itself; the same queries then get the same answers.
        restoredReplies.length = 0
        yield* restored.write(new TextEncoder().encode(query))
        expect(liveReplies.join("")).toContain("rgb:ffff/0000/0000")
        expect(liveReplies.join("")).toContain("rgb:1212/3434/5656")
        expect(restoredReplies).toEqual(liveReplies)
      })
  )

  it.scoped("a snapshot reports the visible text, cursor, screen and title", () =>
    Effect.gen(function* () {
      const model = yield* ScreenModel.make({ cols: 20, rows: 4, scrollback: 100 })
      yield* model.write(bytes("\x1b]0;my title\x07one   \r\n\x1b[31mtwo\x1b[0m\r\nthree\x1b[2;6H"))
      expect(yield* model.snapshot()).toMatchObject({
        cols: 20,
        rows: 4,
        text: "one\ntwo\nthree\n",
        cursor: { x: 5, y: 1 },
        altScreen: false,
        title: "my title"
      })
      yield* model.write(bytes("\x1b[?1049h\x1b[Halt"))
      expect(yield* model.snapshot()).toMatchObject({
        text: "alt\n\n\n",
        cursor: { x: 3, y: 0 },
        altScreen: true
      })
    })
  )

  it.scoped("the title survives a restore", () =>
    Effect.gen(function* () {
      const model = yield* ScreenModel.make({ cols: 20, rows: 4, scrollback: 100 })
      yield* model.write(bytes("\x1b]2;vim: notes.md\x07text"))
      const restored = yield* ScreenModel.restore(yield* model.snapshot(), { scrollback: 100 })
      expect((yield* restored.snapshot()).title).toBe("vim: notes.md")
    })
  )

  it.scoped("UTF-8 split across writes renders as the characters it encodes", () =>
    Effect.gen(function* () {
      const text = "é and 🎉 and 日本"
      const model = yield* ScreenModel.make({ cols: 40, rows: 3, scrollback: 10 })
      for (const byte of bytes(text)) yield* model.write(Uint8Array.of(byte))
      const snapshot = yield* model.snapshot()
      expect(snapshot.text.split("\n")[0]).toBe(text)
      const raw = yield* reference(40, 3, 10)
      yield* feed(raw, text)
      const restored = yield* reference(40, 3, 10)
      yield* feed(restored, snapshot.vt)
      expect(dump(restored)).toEqual(dump(raw))
      expect(snapshot.cursor).toEqual(dump(raw).cursor)
      // Emoji and CJK take two columns each (Unicode 11), as in modern terminals.
      expect(snapshot.cursor.x).toBe(17)
    })
  )

  it.scoped("scrollback is bounded, and so is the snapshot however long the session ran", () =>
    Effect.gen(function* () {
      const model = yield* ScreenModel.make({ cols: 80, rows: 24, scrollback: 1000 })
      const lines = (from: number, count: number) =>
        bytes(Array.from({ length: count }, (_, n) => `line ${from + n}\r\n`).join(""))
      for (let n = 0; n < 10_000; n += 500) yield* model.write(lines(n, 500))
      const early = yield* model.snapshot()
      for (let n = 10_000; n < 20_000; n += 500) yield* model.write(lines(n, 500))
      const late = yield* model.snapshot()

      const restored = yield* reference(80, 24, 100_000)
      yield* feed(restored, late.vt)
      expect(restored.buffer.normal.length).toBeLessThanOrEqual(1000 + 24)
      expect(restored.buffer.normal.getLine(0)?.translateToString(true)).toBe("line 18977")
      expect(late.text.split("\n")[22]).toBe("line 19999")
      expect(late.vt.length).toBeLessThan(1024 * 14)
      expect(Math.abs(late.vt.length - early.vt.length)).toBeLessThan(early.vt.length / 10)

      const short = yield* model.snapshot({ scrollbackLines: 10 })
      const shortRestored = yield* reference(80, 24, 100_000)
      yield* feed(shortRestored, short.vt)
      expect(shortRestored.buffer.normal.length).toBe(10 + 24)
      expect(short.text).toBe(late.text)
    })
  )

  it.scoped(
    "rebuilding from a snapshot and the output after it gives the screen of the model fed everything",
    () =>
      Effect.gen(function* () {
        const steps: ReadonlyArray<ScreenModel.Output> = [
          { data: bytes(fill(40, 60)) },
          { data: bytes("\x1b[3;10r\x1b[31mred region\x1b[0m\x1b]0;title\x07") },
          { resize: { cols: 70, rows: 20 } },
          { data: bytes("\r\n".repeat(5) + "after resize é") },
          { data: bytes("\x1b[?1049h\x1b[2Jin vim") },
          { data: bytes("\x1b[?1049lback\x1b[r") },
          { resize: { cols: 50, rows: 15 } },
          { data: bytes("x".repeat(120)) }
        ]
        const apply = (model: ScreenModel.ScreenModel, step: ScreenModel.Output) =>
          "data" in step ? model.write(step.data) : model.resize(step.resize.cols, step.resize.rows)
        const whole = yield* ScreenModel.make({ cols: 60, rows: 24, scrollback: 500 })
        for (const step of steps) yield* apply(whole, step)
        const expected = yield* whole.snapshot()

        for (let cut = 0; cut <= steps.length; cut++) {
          const model = yield* ScreenModel.make({ cols: 60, rows: 24, scrollback: 500 })
          for (const step of steps.slice(0, cut)) yield* apply(model, step)
          const base = yield* model.snapshot()
          const rebuilt = yield* ScreenModel.rebuild({
            cols: 60,
            rows: 24,
            scrollback: 500,
            base: cut === 0 ? Option.none() : Option.some(base),
            outputs: steps.slice(cut)
          })
          expect({ cut, ...rebuilt }).toEqual({ cut, ...expected })
        }
      })
  )

  it.scoped("queries xterm.js leaves unanswered get a real xterm's answer, in order with the others", () =>
    Effect.gen(function* () {
      const replies: Array<string> = []
      const model = yield* ScreenModel.make({
        cols: 100,
        rows: 30,
        scrollback: 10,
        onReply: (reply) => replies.push(reply)
      })
      yield* model.write(
        bytes("\x1b[c\x1b[>q\x1b[14t\x1b[16t\x1b[19t\x1b[18t\x1b[>1q\x1b[11t\x1b[13t\x1b[5n")
      )
      expect(replies).toEqual([
        "\x1b[?1;2c",
        "\x1bP>|vibes\x1b\\",
        `\x1b[4;${30 * ScreenModel.nominalCell.height};${100 * ScreenModel.nominalCell.width}t`,
        `\x1b[6;${ScreenModel.nominalCell.height};${ScreenModel.nominalCell.width}t`,
        "\x1b[9;30;100t",
        "\x1b[8;30;100t",
        "\x1b[1t",
        "\x1b[3;0;0t",
        "\x1b[0n"
      ])
    })
  )

  it.scoped("the bell and title hooks fire for what the program prints", () =>
    Effect.gen(function* () {
      const seen: Array<string> = []
      const model = yield* ScreenModel.make({
        cols: 20,
        rows: 4,
        scrollback: 10,
        onBell: () => seen.push("bell"),
        onTitle: (title) => seen.push(`title ${title}`)
      })
      yield* model.write(bytes("ding\x07"))
      expect(seen).toEqual(["bell"])
      yield* model.write(bytes("\x1b]0;build\x07\x07"))
      expect(seen).toEqual(["bell", "title build", "bell"])
    })
  )

  it.effect("a model used after its scope closed dies instead of hanging", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const model = yield* ScreenModel.make({ cols: 20, rows: 4, scrollback: 10 }).pipe(Scope.extend(scope))
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Effect.exit(model.write(bytes("late")))
      expect(Exit.isFailure(exit) && !Exit.isInterrupted(exit)).toBe(true)
    })
  )
})
