/**
 * What the CLI prints for people: text that came from the server (session names, commands, cwds,
 * job commands and labels, event payloads, error messages) is shown, never obeyed. A name with
 * `ESC ] 52 ; c ; …` in it must not write the user's clipboard, a command must not retitle the
 * window or move the cursor. Output meant to be raw (attach, job output, `snapshot --vt`) does
 * not go through here.
 */

const named: Readonly<Record<number, string>> = { 0x09: "\\t", 0x0a: "\\n", 0x0d: "\\r", 0x1b: "\\e" }

/**
 * Characters a terminal acts on or that rearrange what is shown: C0 controls, DEL, C1 controls,
 * the line and paragraph separators, and the bidirectional formatting characters (which can make
 * text read differently from what it is).
 */
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const unsafe = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g

/** What `JSON.stringify` leaves unescaped of `unsafe` (it escapes C0; its own line breaks are layout). */
const leftRaw = /[\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/g

const hex = (code: number, width: number) => code.toString(16).padStart(width, "0")

/**
 * `text` safe to print to a terminal: every control or formatting character written as a visible
 * escape (`\e` for ESC, `\n`, `\t`, `\r`, `\x07`, `\x9b`, `\u202e`); everything else as it is.
 */
export const printable = (text: string): string =>
  text.replace(unsafe, (char) => {
    const code = char.charCodeAt(0)
    return named[code] ?? (code <= 0xff ? `\\x${hex(code, 2)}` : `\\u${hex(code, 4)}`)
  })

/** Like `printable`, line by line: the line breaks stay line breaks. */
export const printableLines = (text: string): string => text.split("\n").map(printable).join("\n")

/**
 * `value` as JSON that is also safe to print: `JSON.stringify` escapes C0 controls but leaves DEL,
 * C1 controls and the formatting characters as they are; those become `\u` escapes too. The
 * result parses to the same value.
 */
export const json = (value: unknown, indent?: number): string =>
  JSON.stringify(value, null, indent).replace(leftRaw, (char) => `\\u${hex(char.charCodeAt(0), 4)}`)

/** Left-aligned columns, two spaces apart; cells are printed escaped (names and models come from outside). */
export const table = (cells: ReadonlyArray<ReadonlyArray<string>>): string => {
  const rows = cells.map((row) => row.map(printable))
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => (row[i] ?? "").length))) ?? []
  return rows
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i] ?? 0))
        .join("  ")
        .trimEnd()
    )
    .join("\n")
}

/** `bytes` for people: 512 B, 1.5 KiB, 20.0 MiB. */
export const formatBytes = (bytes: number): string => {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"]
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`
}
