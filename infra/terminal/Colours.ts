/**
 * The dynamic colours of a headless terminal (OSC 4 palette, OSC 10/11/12 foreground, background
 * and cursor, and their resets 104/110/111/112), which headless xterm.js parses but does not keep:
 * kept here, so that queries (`OSC 11;?`) get the answer a real xterm would give, and so that a
 * snapshot sets them again. The defaults are those of vibes' web terminal (xterm.js' palette on a
 * #0b0d10 background).
 */
import type { Terminal } from "@xterm/headless"

type Rgb = readonly [number, number, number]

/** The dynamic colours of one terminal. */
export interface Colours {
  /** The OSC sequences that set the colours changed from their defaults. */
  readonly serialize: () => string
}

const ansi: ReadonlyArray<string> = [
  "2e3436",
  "cc0000",
  "4e9a06",
  "c4a000",
  "3465a4",
  "75507b",
  "06989a",
  "d3d7cf",
  "555753",
  "ef2929",
  "8ae234",
  "fce94f",
  "729fcf",
  "ad7fa8",
  "34e2e2",
  "eeeeec"
]

const hex = (text: string): Rgb => [
  parseInt(text.slice(0, 2), 16),
  parseInt(text.slice(2, 4), 16),
  parseInt(text.slice(4, 6), 16)
]

/** Palette entry `index` as xterm.js has it by default. */
export const defaultPalette = (index: number): Rgb => {
  if (index < 16) return hex(ansi[index] ?? "000000")
  if (index < 232) {
    const levels = [0, 0x5f, 0x87, 0xaf, 0xd7, 0xff]
    const n = index - 16
    return [levels[Math.floor(n / 36)] ?? 0, levels[Math.floor(n / 6) % 6] ?? 0, levels[n % 6] ?? 0]
  }
  const grey = 8 + (index - 232) * 10
  return [grey, grey, grey]
}

/** Foreground (10), background (11) and cursor (12) by default. */
const defaultSpecial: Record<number, Rgb> = { 10: hex("ffffff"), 11: hex("0b0d10"), 12: hex("ffffff") }

/** An X11 colour spec (`rgb:r/g/b` with 1–4 hex digits each, or `#rgb` … `#rrrrggggbbbb`). */
export const parseColour = (spec: string): Rgb | undefined => {
  const rgb = /^rgb:([0-9a-f]{1,4})\/([0-9a-f]{1,4})\/([0-9a-f]{1,4})$/i.exec(spec.trim())
  if (rgb !== null) {
    const scale = (part: string | undefined) =>
      Math.round((parseInt(part ?? "0", 16) / (16 ** (part ?? "0").length - 1)) * 255)
    return [scale(rgb[1]), scale(rgb[2]), scale(rgb[3])]
  }
  const sharp = /^#((?:[0-9a-f]{3}){1,4})$/i.exec(spec.trim())
  if (sharp?.[1] !== undefined) {
    const digits = sharp[1].length / 3
    const part = (n: number) => parseInt(sharp[1]?.slice(n * digits, n * digits + digits) ?? "0", 16)
    const shift = (value: number) => (digits === 1 ? value * 17 : value >> (4 * (digits - 2)))
    return [shift(part(0)), shift(part(1)), shift(part(2))]
  }
  return undefined
}

const report = (rgb: Rgb) => `rgb:${rgb.map((c) => c.toString(16).padStart(2, "0").repeat(2)).join("/")}`
const spec = (rgb: Rgb) => `rgb:${rgb.map((c) => c.toString(16).padStart(2, "0")).join("/")}`

/** Tracks the colours `terminal` is told, answering queries through `reply`. */
export const track = (terminal: Terminal, reply: (answer: string) => void): Colours => {
  const palette = new Map<number, Rgb>()
  const special = new Map<number, Rgb>()
  const paletteColour = (index: number) => palette.get(index) ?? defaultPalette(index)
  const specialColour = (code: number) => special.get(code) ?? defaultSpecial[code] ?? hex("000000")

  terminal.parser.registerOscHandler(4, (data) => {
    const fields = data.split(";")
    for (let at = 0; at + 1 < fields.length; at += 2) {
      const index = Number(fields[at])
      const value = fields[at + 1] ?? ""
      if (!Number.isInteger(index) || index < 0 || index > 255) continue
      if (value === "?") reply(`\x1b]4;${index};${report(paletteColour(index))}\x1b\\`)
      else {
        const parsed = parseColour(value)
        if (parsed !== undefined) palette.set(index, parsed)
      }
    }
    return true
  })
  for (const code of [10, 11, 12]) {
    terminal.parser.registerOscHandler(code, (data) => {
      // `OSC 10;a;b` sets 10 and 11: each further value is for the next code.
      data.split(";").forEach((value, offset) => {
        const target = code + offset
        if (target > 12) return
        if (value === "?") reply(`\x1b]${target};${report(specialColour(target))}\x1b\\`)
        else {
          const parsed = parseColour(value)
          if (parsed !== undefined) special.set(target, parsed)
        }
      })
      return true
    })
    terminal.parser.registerOscHandler(code + 100, () => {
      special.delete(code)
      return true
    })
  }
  terminal.parser.registerOscHandler(104, (data) => {
    if (data.trim() === "") palette.clear()
    else for (const index of data.split(";")) palette.delete(Number(index))
    return true
  })

  return {
    serialize: () => {
      let out = ""
      for (const [index, rgb] of palette) out += `\x1b]4;${index};${spec(rgb)}\x1b\\`
      for (const [code, rgb] of special) out += `\x1b]${code};${spec(rgb)}\x1b\\`
      return out
    }
  }
}
