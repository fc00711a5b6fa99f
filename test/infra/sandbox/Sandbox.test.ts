/**
 * How programs are started: under a root server as the run-as user through setpriv, never as
 * root; under an ordinary user's in namespaces that hide the data dir and the server's processes,
 * ending as the program ends; not at all when the sandbox is off.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import * as Sandbox from "../../../infra/sandbox/Sandbox.js"
import { eventually } from "../../support/Attach.js"
import { tempDir } from "../../support/TempDir.js"

/** A program started through the namespace wrapper for `dataDir`, in a process group of its own. */
const inNamespaces = (dataDir: string, command: string, cwd: string, hidden: ReadonlyArray<string> = []) => {
  const [file, ...args] = Sandbox.namespaceWrapper(
    dataDir,
    process.getuid?.() ?? 0,
    process.getgid?.() ?? 0,
    hidden
  )
  const child = childProcess.spawn(file ?? "perl", [...args, "/bin/sh", "-c", command], {
    cwd,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal }))
  )
  return {
    pid: child.pid ?? 0,
    output: () => stdout,
    exit: Effect.promise(() => exited)
  }
}

const until = (what: string, test: () => boolean) =>
  eventually(
    Effect.sync(() => (test() ? Option.some(true) : Option.none())),
    what
  )

describe("Sandbox", () => {
  it.scoped("off: programs run as the server's user, with no wrapper", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-sandbox-")
      const sandbox = yield* Sandbox.make({ mode: "off", runAs: "vibes", dataDir })
      expect(sandbox._tag).toBe("SameUser")
      expect(Sandbox.wrapper(sandbox)).toEqual([])
      expect(Sandbox.identityEnv(sandbox)).toEqual({})
    })
  )

  it.scoped("an ordinary user's server by default: programs run in namespaces of their own", () =>
    Effect.gen(function* () {
      if (process.getuid?.() === 0) return // As root: the next test.
      const dataDir = yield* tempDir("vibes-sandbox-")
      const sandbox = yield* Sandbox.make({ mode: "auto", runAs: "vibes", dataDir })
      expect(sandbox._tag).toBe("Namespaces")
      expect(Sandbox.wrapper(sandbox)).toEqual(
        Sandbox.namespaceWrapper(dataDir, process.getuid?.() ?? 0, process.getgid?.() ?? 0)
      )
    })
  )

  it.scoped(
    "namespaces: the data dir and the server's processes are hidden, the rest of the files are not",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-sandbox-")
        const work = yield* tempDir("vibes-sandbox-work-")
        fs.writeFileSync(path.join(dataDir, "admin-token"), "secret-admin-token\n")
        fs.writeFileSync(path.join(work, "visible"), "visible\n")
        const program = inNamespaces(
          dataDir,
          `echo "[$(ls -A "${dataDir}")]"; cat visible; ls /proc | grep -c '^[0-9]'; test -e /proc/${process.pid}/environ && echo server-seen; true`,
          work
        )
        expect(yield* program.exit).toEqual({ code: 0, signal: null })
        const [listing, visible, processes, ...rest] = program.output().split("\n")
        expect(listing).toBe("[]")
        expect(visible).toBe("visible")
        // The shell, its pipeline and the namespace's init: nothing of the server.
        expect(Number(processes)).toBeLessThanOrEqual(5)
        expect(rest.join("")).not.toContain("server-seen")
      })
  )

  it.scoped(
    "namespaces: other secret paths read as an empty file or directory; missing ones are skipped",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-sandbox-")
        const keys = yield* tempDir("vibes-sandbox-keys-")
        const keyFile = path.join(keys, "provider.key")
        const keyDir = path.join(keys, "more")
        fs.writeFileSync(keyFile, "sk-in-a-key-file\n", { mode: 0o600 })
        fs.mkdirSync(keyDir)
        fs.writeFileSync(path.join(keyDir, "other.key"), "sk-in-a-key-dir\n", { mode: 0o600 })
        const program = inNamespaces(
          dataDir,
          `echo "[$(cat ${keyFile})]"; echo "[$(ls -A ${keyDir})]"`,
          keys,
          [keyFile, keyDir, path.join(keys, "absent.key")]
        )
        expect(yield* program.exit).toEqual({ code: 0, signal: null })
        expect(program.output()).toBe("[]\n[]\n")
        // Outside the namespaces they are as they were.
        expect(fs.readFileSync(keyFile, "utf8")).toBe("sk-in-a-key-file\n")
      })
  )

  it.scoped("namespaces: the wrapper ends as the program ends, with its exit code or its signal", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-sandbox-")
      const run = (command: string) => inNamespaces(dataDir, command, dataDir).exit
      expect(yield* run("exit 3")).toEqual({ code: 3, signal: null })
      expect(yield* run("exit 143")).toEqual({ code: 143, signal: null })
      expect(yield* run("kill -TERM $$")).toEqual({ code: null, signal: "SIGTERM" })
      expect(yield* run("kill -KILL $$")).toEqual({ code: null, signal: "SIGKILL" })
      expect(yield* run("exec /nonexistent/program")).toEqual({ code: 127, signal: null })
    })
  )

  it.scoped("namespaces: when the wrapper has ended, nothing of it is left in its process group", () =>
    Effect.gen(function* () {
      // Closing a session waits until its group is empty: unshare, left to the system's init to
      // reap, stayed in it as a zombie for over a second on this machine.
      const dataDir = yield* tempDir("vibes-sandbox-")
      const groupLeft = (pid: number) => {
        try {
          process.kill(-pid, 0)
          return true
        } catch {
          return false
        }
      }
      for (const command of ["exit 0", "exit 5", "kill -HUP $$"]) {
        const program = inNamespaces(dataDir, command, dataDir)
        yield* program.exit
        expect(groupLeft(program.pid)).toBe(false)
      }
    })
  )

  it.scopedLive("namespaces: a signal to the process group reaches the program, which may handle it", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-sandbox-")
      const plain = inNamespaces(dataDir, "echo ready; exec sleep 60", dataDir)
      yield* until("the program to start", () => plain.output() === "ready\n")
      process.kill(-plain.pid, "SIGTERM")
      expect(yield* plain.exit).toEqual({ code: null, signal: "SIGTERM" })

      const trapping = inNamespaces(
        dataDir,
        'trap "echo cleaned; exit 7" TERM; echo ready; while :; do sleep 0.05; done',
        dataDir
      )
      yield* until("the program to start", () => trapping.output() === "ready\n")
      process.kill(-trapping.pid, "SIGTERM")
      expect(yield* trapping.exit).toEqual({ code: 7, signal: null })
      expect(trapping.output()).toBe("ready\ncleaned\n")
    })
  )

  it.scopedLive("namespaces: what the program leaves running goes on after it ends", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-sandbox-")
      const work = yield* tempDir("vibes-sandbox-work-")
      const program = inNamespaces(
        dataDir,
        "(while [ ! -e gate ]; do sleep 0.02; done; echo late > out) >/dev/null 2>&1 & echo early",
        work
      )
      // The wrapper ends with the program, while what it left waits for the gate.
      expect(yield* program.exit).toEqual({ code: 0, signal: null })
      expect(fs.existsSync(path.join(work, "out"))).toBe(false)
      fs.writeFileSync(path.join(work, "gate"), "")
      yield* until("the program's child to finish", () => fs.existsSync(path.join(work, "out")))
      expect(fs.readFileSync(path.join(work, "out"), "utf8")).toBe("late\n")
    })
  )

  it.scoped(
    "as root, a program started through the wrapper runs as the run-as user with its groups, in namespaces",
    () =>
      Effect.gen(function* () {
        if (process.getuid?.() !== 0) return // Needs root to switch users: the previous test.
        const dataDir = yield* tempDir("vibes-sandbox-")
        const sandbox = yield* Sandbox.make({ mode: "auto", runAs: "vibes", dataDir })
        if (sandbox._tag !== "RunAs") return expect.fail(`expected RunAs, got ${sandbox._tag}`)
        expect(Sandbox.identityEnv(sandbox)).toMatchObject({ USER: "vibes", HOME: sandbox.user.home })
        const [file, ...args] = Sandbox.wrapper(sandbox)
        const ids = childProcess
          .execFileSync(
            file ?? "perl",
            [...args, "/bin/sh", "-c", `echo "$(id -u) $(id -g) $(ls /proc | grep -c '^[0-9]') $(id -G)"`],
            { encoding: "utf8" }
          )
          .trim()
          .split(" ")
        expect(ids[0]).toBe(String(sandbox.user.uid))
        expect(ids[1]).toBe(String(sandbox.user.gid))
        // In PID namespaces of its own: the shell, its pipeline and the init, no other process.
        expect(Number(ids[2])).toBeLessThanOrEqual(5)
        expect(ids.slice(3)).not.toContain("0")
      })
  )

  it.scoped("as root, servers that start at once and race to create the run-as user all get it", () =>
    Effect.gen(function* () {
      if (process.getuid?.() !== 0) return // Needs root to create users.
      const name = `vibes-t${process.pid}`
      const home = path.join(yield* tempDir("vibes-runas-"), "home")
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => childProcess.spawnSync("userdel", ["--remove", name], { stdio: "ignore" }))
      )
      // Another server's useradd wins between this one's look-up and its own useradd, which then
      // fails for real ("already exists").
      let calls = 0
      const racing = (user: string, dir: string) => {
        calls++
        childProcess.execFileSync("useradd", ["--system", "--home-dir", dir, user], { stdio: "ignore" })
        childProcess.execFileSync("useradd", ["--system", "--home-dir", dir, user], { stdio: "pipe" })
      }
      const user = yield* Sandbox.ensureUser(name, { home, create: racing })
      expect(calls).toBe(1)
      expect(user.name).toBe(name)
      expect(user.uid).not.toBe(0)
      // A second server finds it without creating anything.
      const again = yield* Sandbox.ensureUser(name, {
        home,
        create: () => expect.fail("the user exists: nothing to create")
      })
      expect(again.uid).toBe(user.uid)
    })
  )

  it.effect("refuses to run programs as root", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(Sandbox.ensureUser("root"))
      expect(error._tag).toBe("SandboxError")
      expect(error.message).toContain("VIBES_RUN_AS")
    })
  )
})
