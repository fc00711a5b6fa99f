import * as childProcess from "node:child_process"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import * as Proc from "../../../infra/proc/Proc.js"

/** A `sleep` child of this process with `VIBES_PROC_TEST=<marker>`, killed with the scope. */
const sleeper = (marker: string) =>
  Effect.acquireRelease(
    Effect.sync(() =>
      childProcess.spawn("sleep", ["30"], {
        env: { ...process.env, VIBES_PROC_TEST: marker },
        stdio: "ignore"
      })
    ),
    (child) => Effect.sync(() => child.kill("SIGKILL"))
  )

describe("/proc", () => {
  it("parses a stat line whose command name holds spaces and parentheses", () => {
    const line = "4242 (a) b (c) S 1 4242 4242 34816 4250 4194560 0 0 0 0 7 3 0 0 20 0 1 0 100 0 0"
    expect(Proc.parseStat(line)).toEqual(
      Option.some({ state: "S", ppid: 1, pgrp: 4242, session: 4242, tpgid: 4250, utime: 7, stime: 3 })
    )
    expect(Proc.parseStat("garbage")).toEqual(Option.none())
  })

  it.scoped("reads this process, its children, their command and environment", () =>
    Effect.gen(function* () {
      const own = Option.getOrThrow(Proc.stat(process.pid))
      expect(own.ppid).toBe(process.ppid)
      expect(Proc.isRunning(process.pid)).toBe(true)
      const marker = `m-${process.pid}-${Date.now()}`
      const child = yield* sleeper(marker)
      const pid = child.pid ?? 0
      expect(Proc.childrenOf(process.pid)).toContain(pid)
      expect(Proc.descendants(process.pid, "sleep")).toContain(pid)
      expect(Proc.comm(pid)).toEqual(Option.some("sleep"))
      expect(Option.getOrThrow(Proc.cmdline(pid)).split("\u0000")).toEqual(["sleep", "30", ""])
      expect(Proc.hasEnv(pid, "VIBES_PROC_TEST", marker)).toBe(true)
      // Exactly NAME=value: neither a prefix of the value nor of the name.
      expect(Proc.hasEnv(pid, "VIBES_PROC_TEST", marker.slice(0, -1))).toBe(false)
      expect(Proc.hasEnv(pid, "PROC_TEST", marker)).toBe(false)
      expect(Proc.kib(process.pid, "status", "VmRSS")).toBeGreaterThan(0)
    })
  )

  it.effect("a process that ended, or never was, reads as absent and not running", () =>
    Effect.gen(function* () {
      const child = childProcess.spawn("true", [], { stdio: "ignore" })
      const pid = child.pid ?? 0
      yield* Effect.promise(() => new Promise((resolve) => child.once("exit", resolve)))
      expect(Proc.isRunning(pid)).toBe(false)
      expect(Proc.stat(999_999_999)).toEqual(Option.none())
      expect(Proc.cmdline(999_999_999)).toEqual(Option.none())
      expect(Proc.hasEnv(999_999_999, "A", "b")).toBe(false)
      expect(Proc.isRunning(999_999_999)).toBe(false)
    })
  )
})
