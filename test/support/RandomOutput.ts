/**
 * Random but valid output of a full-screen program, for the screen model's property tests: text
 * (wide, combining, emoji), SGR with every colour form and underline style, cursor moves, erases,
 * scroll regions, modes, screen switches, charsets, hyperlinks, titles, tab stops and colours.
 */
import { FastCheck as fc } from "effect"

export const int = (min: number, max: number) => fc.integer({ min, max })
const csi = (body: fc.Arbitrary<string>) => body.map((text) => `\x1b[${text}`)

const colour = (base: number, extended: number) =>
  fc.oneof(
    int(0, 7).map((n) => String(base + n)),
    int(0, 7).map((n) => String(base + 60 + n)),
    int(0, 255).map((n) => `${extended};5;${n}`),
    fc.tuple(int(0, 255), int(0, 255), int(0, 255)).map(([r, g, b]) => `${extended};2;${r};${g};${b}`),
    fc.constant(String(base + 9))
  )

const sgrPart = fc.oneof(
  colour(30, 38),
  colour(40, 48),
  fc.constantFrom(
    "0",
    "1",
    "2",
    "3",
    "5",
    "7",
    "8",
    "9",
    "21",
    "22",
    "23",
    "24",
    "25",
    "27",
    "28",
    "29",
    "53",
    "55"
  ),
  int(0, 5).map((style) => `4:${style}`),
  fc.constant("4"),
  int(0, 255).map((n) => `58:5:${n}`),
  fc.tuple(int(0, 255), int(0, 255), int(0, 255)).map(([r, g, b]) => `58:2::${r}:${g}:${b}`),
  fc.constant("59")
)

const text = fc.oneof(
  fc.stringMatching(/^[a-zA-Z0-9 .,:;!?()-]{1,30}$/),
  fc.constantFrom(
    "日本語",
    "表",
    "漢字テキスト",
    "🎉",
    "🚀x",
    "e\u0301",
    "n\u0303a",
    "─│┌",
    "ä ö ü",
    "x".repeat(90)
  )
)

/** One piece of random but valid output of a full-screen program. */
export const step: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: text },
  {
    weight: 4,
    arbitrary: fc.array(sgrPart, { minLength: 1, maxLength: 4 }).map((parts) => `\x1b[${parts.join(";")}m`)
  },
  { weight: 3, arbitrary: fc.tuple(int(1, 26), int(1, 42)).map(([y, x]) => `\x1b[${y};${x}H`) },
  {
    weight: 3,
    arbitrary: fc.oneof(
      csi(
        fc
          .tuple(int(0, 5), fc.constantFrom("A", "B", "C", "D", "E", "F", "G", "d", "`"))
          .map(([n, f]) => `${n}${f}`)
      ),
      fc.constantFrom("\r", "\n", "\r\n", "\b", "\t", "\x1bD", "\x1bE", "\x1bM")
    )
  },
  {
    weight: 3,
    arbitrary: csi(
      fc
        .tuple(int(0, 3), fc.constantFrom("J", "K", "X", "P", "@", "L", "M", "S", "T"))
        .map(([n, f]) => (f === "J" || f === "K" ? `${Math.min(n, 2)}${f}` : `${n}${f}`))
    )
  },
  { weight: 1, arbitrary: fc.tuple(int(1, 12), int(1, 12)).map(([a, b]) => `\x1b[${a};${a + b}r`) },
  { weight: 1, arbitrary: fc.constant("\x1b[r") },
  {
    weight: 2,
    arbitrary: fc
      .tuple(
        fc.constantFrom(1, 6, 7, 9, 12, 25, 45, 66, 1000, 1002, 1003, 1004, 1006, 1016, 2004, 2026),
        fc.boolean()
      )
      .map(([mode, on]) => `\x1b[?${mode}${on ? "h" : "l"}`)
  },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom(4, 20), fc.boolean()).map(([m, on]) => `\x1b[${m}${on ? "h" : "l"}`)
  },
  { weight: 1, arbitrary: int(0, 6).map((n) => `\x1b[${n} q`) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "\x1b[?1049h",
      "\x1b[?1049l",
      "\x1b[?47h",
      "\x1b[?47l",
      "\x1b[?1047h",
      "\x1b[?1047l"
    )
  },
  { weight: 1, arbitrary: fc.constantFrom("\x1b7", "\x1b8", "\x1b[?1048h", "\x1b[?1048l", "\x1b=", "\x1b>") },
  { weight: 1, arbitrary: fc.constantFrom("\x1b(0", "\x1b(B", "\x1b)0", "\x1b)B", "\x0e", "\x0f", "\x1b(A") },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.constantFrom(
        "\x1b]8;;https://example.com/a\x1b\\",
        "\x1b]8;id=x1;https://example.com/b\x07",
        "\x1b]8;;\x1b\\"
      )
    )
  },
  {
    weight: 1,
    arbitrary: fc.oneof(
      fc.stringMatching(/^[a-z ]{0,12}$/).map((title) => `\x1b]0;${title}\x07`),
      fc.stringMatching(/^[a-z ]{0,12}$/).map((title) => `\x1b]2;${title}\x1b\\`),
      fc.constantFrom("\x1b[22;0t", "\x1b[23;0t", "\x1b[22;2t", "\x1b[23;2t")
    )
  },
  { weight: 1, arbitrary: fc.constantFrom("\x1bH", "\x1b[g", "\x1b[3g", '\x1b[1"q', '\x1b[0"q', '\x1b[2"q') },
  {
    weight: 1,
    arbitrary: fc.oneof(
      int(0, 255).map((n) => `\x1b]4;${n};rgb:12/34/56\x1b\\`),
      fc.constantFrom("\x1b]10;#abcdef\x07", "\x1b]11;rgb:ff/00/00\x1b\\", "\x1b]104\x07", "\x1b]111\x07")
    )
  }
)
