/**
 * Linux's `/proc`: the one reader of other processes' state in vibes (its tests and benchmarks
 * use it too). Every function answers for the moment it reads: a process may end right after, so
 * none throws; a process that is gone, or not ours to read, reads as absent.
 */
import * as fs from "node:fs"
import { Option } from "effect"

/** The fields of `/proc/<pid>/stat` that vibes uses. */
export interface Stat {
  /** `R`, `S`, `D`, `Z` (a zombie: ended, not yet reaped), … */
  readonly state: string
  readonly ppid: number
  /** Process group. */
  readonly pgrp: number
  readonly session: number
  /** The foreground process group of its controlling terminal (-1 or 0 without one). */
  readonly tpgid: number
  /** CPU time in user and kernel mode, in clock ticks (see `clockTicks`). */
  readonly utime: number
  readonly stime: number
}

const read = (pid: number | string, file: string): Option.Option<string> => {
  try {
    return Option.some(fs.readFileSync(`/proc/${pid}/${file}`, "utf8"))
  } catch {
    return Option.none()
  }
}

/**
 * Parses a `stat` line. The command name (field 2) may hold spaces and parentheses, so the fields
 * are counted from its closing parenthesis (the last one on the line).
 */
export const parseStat = (line: string): Option.Option<Stat> => {
  const close = line.lastIndexOf(")")
  if (close < 0) return Option.none()
  const fields = line.slice(close + 2).split(" ")
  const int = (i: number) => Number.parseInt(fields[i] ?? "", 10)
  const stat: Stat = {
    state: fields[0] ?? "",
    ppid: int(1),
    pgrp: int(2),
    session: int(3),
    tpgid: int(5),
    utime: int(11),
    stime: int(12)
  }
  return stat.state === "" || !Number.isInteger(stat.ppid) ? Option.none() : Option.some(stat)
}

/** `pid`'s stat line, parsed. */
export const stat = (pid: number): Option.Option<Stat> => Option.flatMap(read(pid, "stat"), parseStat)

/** The pids in `/proc` now. */
export const pids = (): Array<number> => {
  try {
    return fs
      .readdirSync("/proc")
      .filter((entry) => /^\d+$/.test(entry))
      .map(Number)
  } catch {
    return []
  }
}

/** `pid`'s command line, its arguments joined by NUL as the kernel keeps them. */
export const cmdline = (pid: number): Option.Option<string> => read(pid, "cmdline")

/** `pid`'s command name (`comm`, at most 15 characters). */
export const comm = (pid: number): Option.Option<string> =>
  Option.map(read(pid, "comm"), (text) => text.trim())

/** Whether `pid`'s environment holds exactly `NAME=value` (false when it cannot be read). */
export const hasEnv = (pid: number, name: string, value: string): boolean =>
  Option.match(read(pid, "environ"), {
    onNone: () => false,
    onSome: (environ) => `\u0000${environ}`.includes(`\u0000${name}=${value}\u0000`)
  })

/**
 * Whether `pid` runs: it exists (or exists and is not ours to signal) and is not a zombie. Without
 * `/proc` (not Linux), existence alone.
 */
export const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    if (!(error instanceof Error) || !("code" in error) || error.code !== "EPERM") return false
  }
  return Option.match(stat(pid), { onNone: () => true, onSome: (s) => s.state !== "Z" })
}

/** Every process's parent now. */
export const parents = (): Map<number, number> => {
  const out = new Map<number, number>()
  for (const pid of pids()) Option.map(stat(pid), (s) => out.set(pid, s.ppid))
  return out
}

/** The children of `pid` now. */
export const childrenOf = (pid: number): Array<number> =>
  [...parents()].flatMap(([child, parent]) => (parent === pid ? [child] : []))

/** The processes below `pid` (children, their children, …), only those whose `comm` is `name` if given. */
export const descendants = (pid: number, name?: string): Array<number> => {
  const children = new Map<number, Array<number>>()
  for (const [child, parent] of parents()) {
    const list = children.get(parent) ?? []
    list.push(child)
    children.set(parent, list)
  }
  const out: Array<number> = []
  const stack = [...(children.get(pid) ?? [])]
  for (let next = stack.pop(); next !== undefined; next = stack.pop()) {
    out.push(next)
    stack.push(...(children.get(next) ?? []))
  }
  return name === undefined ? out : out.filter((p) => Option.getOrUndefined(comm(p)) === name)
}

/** The KiB figure of the line `field:` of `/proc/<pid>/<file>` (`status`, `smaps_rollup`), NaN when unknown. */
export const kib = (pid: number, file: "status" | "smaps_rollup", field: string): number =>
  Option.match(read(pid, file), {
    onNone: () => Number.NaN,
    onSome: (text) => {
      const line = text.split("\n").find((l) => l.startsWith(`${field}:`))
      return line === undefined ? Number.NaN : Number.parseInt(line.slice(field.length + 1), 10)
    }
  })
