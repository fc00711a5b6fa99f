import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Option, Schedule, Scope, Stream } from "effect"
import * as PtyHostSupervisor from "../../../actors/supervisors/PtyHostSupervisor.js"
import * as DataDir from "../../../infra/datadir/DataDir.js"
import * as PtyExitRecords from "../../../infra/pty/PtyExitRecords.js"
import { PtyHost, PtySpec } from "../../../infra/pty/PtyHost.js"
import * as PtyHostClient from "../../../infra/pty/PtyHostClient.js"
import { pidFilePath, socketPath } from "../../../infra/pty/PtyHostRpcs.js"
import { tempDir } from "../../support/TempDir.js"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..")

/** `vibes pty-host` from the sources, as `vibes serve` would start it. */
const command = (dataDir: string) => [
  process.execPath,
  "--import",
  "tsx",
  path.join(root, "src", "main.ts"),
  "pty-host",
  "--data-dir",
  dataDir
]

/** The same, exiting after `seconds` without running programs or clients. */
const commandIdleFor = (dataDir: string, seconds: number) => [
  "/usr/bin/env",
  `VIBES_PTY_HOST_IDLE_EXIT=${seconds}`,
  ...command(dataDir)
]

const hostPid = (dataDir: string): Option.Option<number> => {
  try {
    const parsed: unknown = JSON.parse(fs.readFileSync(pidFilePath(dataDir), "utf8"))
    return typeof parsed === "object" && parsed !== null && "pid" in parsed && typeof parsed.pid === "number"
      ? Option.some(parsed.pid)
      : Option.none()
  } catch {
    return Option.none()
  }
}

/** A data dir whose PTY host, if one is left running, is killed with the scope. */
const dataDirWithCleanup = Effect.gen(function* () {
  const dir = yield* tempDir("vibes-ptysup-")
  const pids = new Set<number>()
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      for (const pid of [...pids, ...Option.toArray(hostPid(dir))]) {
        try {
          process.kill(pid, "SIGKILL")
        } catch {
          // gone already
        }
      }
    })
  )
  return { dir, remember: (pid: number) => pids.add(pid) }
})

/** Builds the supervisor layer in a scope of its own, closed by the caller. */
const supervise = (options: PtyHostSupervisor.Options) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(PtyHostSupervisor.layer(options), scope).pipe(
      Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause)))
    )
    return {
      scope,
      host: Context.get(context, PtyHost),
      supervisor: Context.get(context, PtyHostSupervisor.PtyHostSupervisor)
    }
  })

/** Whether `pid` is gone (reaped), polling for a bounded while. */
const gone = (pid: number) =>
  Effect.suspend(() => (DataDir.isAlive(pid) ? Effect.fail("alive") : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.upTo("10 seconds"))),
    Effect.as(true),
    Effect.orElseSucceed(() => false)
  )

const pidOf = (supervisor: PtyHostSupervisor.PtyHostSupervisor["Type"]) =>
  supervisor.pid.pipe(Effect.map(Option.getOrThrowWith(() => new Error("no PTY host answers"))))

const cat = (id: string) => program(id, "cat", [])

const program = (id: string, file: string, args: ReadonlyArray<string>) =>
  new PtySpec({
    id,
    file,
    args,
    cwd: os.tmpdir(),
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" },
    cols: 80,
    rows: 24
  })

/** Output of `id` from byte 0 until the text satisfies `predicate`. */
const readUntil = (host: PtyHost["Type"], id: string, predicate: (text: string) => boolean) =>
  host.output(id, 0).pipe(
    Stream.scan("", (text, element) =>
      element._tag === "Data" ? text + Buffer.from(element.data).toString() : text
    ),
    Stream.takeUntil(predicate),
    Stream.runLast,
    Effect.map(Option.getOrElse(() => "")),
    Effect.timeout("10 seconds")
  )

describe("PTY host supervisor", () => {
  it.scopedLive(
    "starts a detached host whose PTYs outlive the supervisor, and a new supervisor reattaches",
    () =>
      Effect.gen(function* () {
        const { dir, remember } = yield* dataDirWithCleanup
        const first = yield* supervise({ dataDir: dir, command: command(dir) })
        expect(yield* first.supervisor.status.get).toBe("running")
        const pid = yield* pidOf(first.supervisor)
        remember(pid)
        expect(pid).not.toBe(process.pid)
        expect(hostPid(dir)).toEqual(Option.some(pid))
        expect(fs.statSync(socketPath(dir)).mode & 0o777).toBe(0o600)

        const info = yield* first.host.spawn(cat("kept"))
        yield* first.host.write("kept", new TextEncoder().encode("before the restart\n"))
        yield* readUntil(first.host, "kept", (text) => text.split("before the restart").length === 3)
        yield* Scope.close(first.scope, Exit.void)
        expect(yield* first.supervisor.status.get).toBe("stopped")
        expect(DataDir.isAlive(pid)).toBe(true)
        expect(DataDir.isAlive(info.pid)).toBe(true)

        const second = yield* supervise({ dataDir: dir, command: command(dir), stopHostOnRelease: true })
        expect(yield* pidOf(second.supervisor)).toBe(pid)
        expect(yield* second.host.list).toHaveLength(1)
        expect((yield* second.host.get("kept")).exit).toBeNull()
        const text = yield* readUntil(
          second.host,
          "kept",
          (text) => text.split("before the restart").length === 3
        )
        expect(text).toBe("before the restart\r\nbefore the restart\r\n")

        yield* Scope.close(second.scope, Exit.void)
        expect(yield* gone(pid)).toBe(true)
        expect(yield* gone(info.pid)).toBe(true)
        expect(fs.existsSync(socketPath(dir))).toBe(false)
        expect(fs.existsSync(pidFilePath(dir))).toBe(false)
      }),
    60_000
  )

  it.scopedLive(
    "starts a new host after kill -9, and the lost host's PTYs are not found",
    () =>
      Effect.gen(function* () {
        const { dir, remember } = yield* dataDirWithCleanup
        const { host, scope, supervisor } = yield* supervise({
          dataDir: dir,
          command: command(dir),
          healthInterval: "200 millis",
          stopHostOnRelease: true
        })
        yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
        const first = yield* pidOf(supervisor)
        remember(first)
        yield* host.spawn(cat("lost"))

        const restarted = supervisor.status.changes.pipe(
          Stream.filter((status) => status === "running"),
          Stream.mapEffect(() => supervisor.pid),
          Stream.filter((pid) => Option.isSome(pid) && pid.value !== first),
          Stream.runHead
        )
        const waiter = yield* Effect.fork(restarted)
        process.kill(first, "SIGKILL")
        yield* waiter.await.pipe(Effect.timeout("30 seconds"))
        const second = yield* pidOf(supervisor)
        remember(second)
        expect(second).not.toBe(first)
        expect(yield* supervisor.restarts).toBe(1)

        expect(yield* Effect.flip(host.get("lost"))).toMatchObject({ _tag: "PtyNotFound" })
        expect(yield* host.list).toEqual([])
        yield* host.spawn(cat("fresh"))
        expect((yield* host.get("fresh")).exit).toBeNull()

        yield* Scope.close(scope, Exit.void)
        expect(yield* gone(second)).toBe(true)
      }),
    60_000
  )

  it.scopedLive(
    "a host left without a server exits after its idle time once its programs have ended, leaving their exits; one whose program runs stays",
    () =>
      Effect.gen(function* () {
        const waiting = yield* dataDirWithCleanup
        const first = yield* supervise({ dataDir: waiting.dir, command: commandIdleFor(waiting.dir, 0.5) })
        const waitingPid = yield* pidOf(first.supervisor)
        waiting.remember(waitingPid)
        const running = yield* first.host.spawn(cat("runs"))
        yield* Scope.close(first.scope, Exit.void)

        // Left after the first, with the same idle time: once it is gone, the first host has
        // been without a client for longer than that.
        const ended = yield* dataDirWithCleanup
        const second = yield* supervise({ dataDir: ended.dir, command: commandIdleFor(ended.dir, 0.5) })
        const endedPid = yield* pidOf(second.supervisor)
        ended.remember(endedPid)
        yield* second.host.spawn(program("ends", "/bin/sh", ["-c", "printf done; exit 3"]))
        yield* readUntil(second.host, "ends", (text) => text.includes("done"))
        yield* Scope.close(second.scope, Exit.void)

        expect(yield* gone(endedPid)).toBe(true)
        const left = (yield* PtyExitRecords.readAll(ended.dir)).flatMap((file) =>
          Option.getOrElse(file.records, () => [])
        )
        expect(left.map((record) => [record.id, record.exit.exitCode])).toEqual([["ends", 3]])

        expect(DataDir.isAlive(waitingPid)).toBe(true)
        expect(DataDir.isAlive(running.pid)).toBe(true)
        expect((yield* PtyHostClient.ping(socketPath(waiting.dir))).ptys).toBe(1)
      }),
    // Two hosts start, one after the other.
    120_000
  )

  it.scopedLive(
    "a host whose data dir is removed exits at once, its programs with it",
    () =>
      Effect.gen(function* () {
        const { dir, remember } = yield* dataDirWithCleanup
        const { host, scope, supervisor } = yield* supervise({ dataDir: dir, command: command(dir) })
        const pid = yield* pidOf(supervisor)
        remember(pid)
        const running = yield* host.spawn(cat("orphan"))
        yield* Scope.close(scope, Exit.void)

        fs.rmSync(dir, { recursive: true, force: true })
        expect(yield* gone(pid)).toBe(true)
        expect(yield* gone(running.pid)).toBe(true)
      }),
    60_000
  )

  it.scopedLive("a host that cannot start fails the layer with its reason", () =>
    Effect.gen(function* () {
      const { dir } = yield* dataDirWithCleanup
      const exit = yield* supervise({
        dataDir: dir,
        command: [process.execPath, "-e", "console.error('no host here'); process.exit(7)"]
      }).pipe(Effect.exit)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toMatch(/exit code 7/)
      expect(String(exit)).toMatch(/no host here/)
    })
  )
})
