import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Deferred, Effect, Exit, Fiber, Layer, Option, Schedule, Scope, Stream } from "effect"
import {
  PtyHost,
  type PtyOutput,
  PtySpawnFailed,
  PtySpec,
  type PtyExited
} from "../../../infra/pty/PtyHost.js"
import * as PtyExitRecords from "../../../infra/pty/PtyExitRecords.js"
import * as PtyHostClient from "../../../infra/pty/PtyHostClient.js"
import { pidFilePath, socketPath } from "../../../infra/pty/PtyHostRpcs.js"
import * as Protocol from "../../../infra/pty/PtyDataProtocol.js"
import { dataSocketPathOf } from "../../../infra/pty/PtyDataProtocol.js"
import * as PtyHostServer from "../../../infra/pty/PtyHostServer.js"
import { tempDir } from "../../support/TempDir.js"
import * as Proc from "../../../infra/proc/Proc.js"

type HostOptions = Omit<PtyHostServer.Options, "dataDir">

/**
 * A host running in this process on `dataDir`, and a client connected to it; the client lives in
 * `clientScope` when given (closing it disconnects), else in the current scope.
 */
const startHostIn = (dataDir: string, options: HostOptions = {}, clientScope?: Scope.Scope) =>
  Effect.gen(function* () {
    const socket = socketPath(dataDir)
    const server = yield* PtyHostServer.run({ dataDir, ...options }).pipe(Effect.forkScoped)
    yield* PtyHostClient.ping(socket).pipe(
      Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
    )
    const context = yield* Layer.build(PtyHostClient.layer({ socketPath: socket })).pipe(
      Scope.extend(clientScope ?? (yield* Effect.scope))
    )
    return {
      dataDir,
      socket,
      server,
      host: Context.get(context, PtyHost),
      control: Context.get(context, PtyHostClient.PtyHostControl)
    }
  })

/** A host running in this process on a fresh data dir, and a client connected to it. */
const startHost = (options: HostOptions = {}) =>
  Effect.flatMap(tempDir("vibes-pty-"), (dataDir) => startHostIn(dataDir, options))

let ids = 0
const spec = (file: string, args: ReadonlyArray<string>, overrides: Partial<PtySpec> = {}) =>
  new PtySpec({
    id: `pty-${process.pid}-${++ids}`,
    file,
    args,
    cwd: os.tmpdir(),
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", LANG: "C" },
    cols: 80,
    rows: 24,
    ...overrides
  })

const sh = (script: string, overrides: Partial<PtySpec> = {}) => spec("/bin/sh", ["-c", script], overrides)

const bytesOf = (elements: ReadonlyArray<PtyOutput>): Buffer =>
  Buffer.concat(elements.flatMap((element) => (element._tag === "Data" ? [element.data] : [])))

const textOf = (elements: ReadonlyArray<PtyOutput>): string => bytesOf(elements).toString("latin1")

const exitedOf = (elements: ReadonlyArray<PtyOutput>): PtyExited => {
  const last = elements[elements.length - 1]
  if (last?._tag !== "Exited") throw new Error(`the output did not end with Exited: ${JSON.stringify(last)}`)
  return last
}

/** Everything a PTY writes, from `from` to its exit. */
const drain = (host: PtyHost["Type"], id: string, from = 0) =>
  host
    .output(id, from)
    .pipe(
      Stream.runCollect,
      Effect.map(Chunk.toReadonlyArray),
      Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`no exit of ${id}`) })
    )

/** Reads the output until the text so far satisfies `predicate`. */
const readUntil = (host: PtyHost["Type"], id: string, predicate: (text: string) => boolean) =>
  host.output(id, 0).pipe(
    Stream.scan("", (text, element) =>
      element._tag === "Data" ? text + Buffer.from(element.data).toString() : text
    ),
    Stream.takeUntil(predicate),
    Stream.runLast,
    Effect.map(Option.getOrElse(() => "")),
    Effect.timeoutFail({
      duration: "10 seconds",
      onTimeout: () => new Error(`the expected output of ${id} never came`)
    })
  )

/** `seq 1 n` as a terminal shows it (the PTY turns \n into \r\n). */
const seqOutput = (n: number): string => {
  const lines: Array<string> = []
  for (let i = 1; i <= n; i++) lines.push(`${i}\r\n`)
  return lines.join("")
}

/**
 * Starts reading a PTY whose program prints "ready" and waits for a line: returns once the reader
 * has seen "ready" (so it is attached), with the fiber collecting everything.
 */
const attachedReader = (
  host: PtyHost["Type"],
  id: string,
  each: (element: PtyOutput) => Effect.Effect<void> = () => Effect.void
) =>
  Effect.gen(function* () {
    const ready = yield* Deferred.make<void>()
    let text = ""
    const fiber = yield* host.output(id, 0).pipe(
      Stream.tap((element) => {
        if (element._tag === "Data") text += Buffer.from(element.data).toString()
        return text.includes("ready") ? Deferred.succeed(ready, undefined) : Effect.void
      }),
      Stream.tap(each),
      Stream.runCollect,
      Effect.map(Chunk.toReadonlyArray),
      Effect.fork
    )
    yield* Deferred.await(ready).pipe(Effect.timeout("10 seconds"))
    return fiber
  })

const enter = new TextEncoder().encode("\n")

/** Equal text, or a failure that shows where they part (not megabytes of diff). */
const expectSameText = (actual: string, expected: string) => {
  let at = 0
  while (at < actual.length && at < expected.length && actual[at] === expected[at]) at++
  if (at < actual.length || at < expected.length) {
    const around = (text: string) => JSON.stringify(text.slice(Math.max(0, at - 40), at + 40))
    throw new Error(
      `texts differ at ${at} (lengths ${actual.length} and ${expected.length}): ${around(actual)} vs ${around(expected)}`
    )
  }
}

const fdCount = (): number => fs.readdirSync("/proc/self/fd").length

/** Pids of this process's children. */
const children = (): ReadonlyArray<number> => Proc.childrenOf(process.pid)

/** Polls `measure` until it returns `expected` (bounded), then returns what it last measured. */
const settlesTo = <A>(measure: () => A, expected: A) =>
  Effect.suspend(() => {
    const value = measure()
    return value === expected ? Effect.succeed(value) : Effect.fail(value)
  }).pipe(
    Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.upTo("10 seconds"))),
    Effect.catchAll((value) => Effect.succeed(value))
  )

describe("PTY host", () => {
  it.scopedLive("a program's output and exit code reach the reader", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      const s = sh("printf hello; exit 3")
      const info = yield* host.spawn(s)
      expect(info.id).toBe(s.id)
      expect(info.pid).toBeGreaterThan(0)

      const output = yield* drain(host, s.id)
      expect(textOf(output)).toBe("hello")
      const exited = exitedOf(output)
      expect(exited.exit.exitCode).toBe(3)
      expect(exited.exit.signal).toBeNull()
      expect(exited.seq).toBe(5)

      const after = yield* host.get(s.id)
      expect(after.seq).toBe(5)
      expect(after.exit?.exitCode).toBe(3)
      // A reader from beyond the end starts at the end.
      const late = yield* drain(host, s.id, 1_000_000)
      expect(late.map((element) => element._tag)).toEqual(["Exited"])
      expect(yield* Effect.flip(host.write(s.id, new Uint8Array([1])))).toMatchObject({
        _tag: "PtyNotRunning"
      })
    })
  )

  it.scopedLive(
    "a direct handler takes the chunks it wants as they arrive; the stream gets the rest, in order, none twice",
    () =>
      Effect.gen(function* () {
        const { host } = yield* startHost()
        const lines = 20000
        const s = sh(`seq 1 ${lines}`)
        yield* host.spawn(s)
        // Every third chunk offered is refused, and while the stream's reader is busy with one
        // the handler is not offered any: the two parts together are the output, in order.
        const received: Array<{ readonly seq: number; readonly data: Uint8Array }> = []
        let offered = 0
        let taken = 0
        const elements = yield* host
          .output(s.id, 0, (data) => {
            offered++
            if (offered % 3 === 0) return false
            taken++
            received.push({ seq: data.seq, data: new Uint8Array(data.data) })
            return true
          })
          .pipe(
            Stream.tap((element) =>
              Effect.sync(() => {
                if (element._tag === "Data")
                  received.push({ seq: element.seq, data: new Uint8Array(element.data) })
              })
            ),
            Stream.runCollect,
            Effect.map(Chunk.toReadonlyArray),
            Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("no exit") })
          )
        let next = 0
        for (const chunk of received) {
          expect(chunk.seq).toBe(next)
          next += chunk.data.length
        }
        expectSameText(
          Buffer.concat(received.map((chunk) => chunk.data)).toString("latin1"),
          seqOutput(lines)
        )
        expect(exitedOf(elements).exit.exitCode).toBe(0)
        expect(taken).toBeGreaterThan(0)
        expect(received.length).toBeGreaterThan(taken)
      })
  )

  it.scopedLive("input written to the PTY reaches the program", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      const s = spec("cat", [])
      yield* host.spawn(s)
      yield* host.write(s.id, new TextEncoder().encode("ping\n"))
      // Once echoed by the terminal, once written back by cat.
      const text = yield* readUntil(host, s.id, (text) => text.split("ping\r\n").length === 3)
      expect(text).toBe("ping\r\nping\r\n")
      yield* host.release(s.id)
      expect(yield* Effect.flip(host.get(s.id))).toMatchObject({ _tag: "PtyNotFound" })
    })
  )

  it.scopedLive("a program gets the TERM its spec asks for, else xterm-256color", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      const plain = sh('printf %s "$TERM"')
      yield* host.spawn(plain)
      expect(textOf(yield* drain(host, plain.id))).toBe("xterm-256color")
      const asked = sh('printf %s "$TERM"', { env: { PATH: "/usr/bin:/bin", TERM: "screen-256color" } })
      yield* host.spawn(asked)
      expect(textOf(yield* drain(host, asked.id))).toBe("screen-256color")
    })
  )

  it.scopedLive("a resize is what the program sees", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      const s = sh("stty size; read x; stty size")
      yield* host.spawn(s)
      yield* readUntil(host, s.id, (text) => text.includes("24 80\r\n"))
      yield* host.resize(s.id, 132, 43)
      expect(yield* host.get(s.id)).toMatchObject({ cols: 132, rows: 43 })
      yield* host.write(s.id, new TextEncoder().encode("\n"))
      const output = yield* drain(host, s.id)
      expect(textOf(output)).toContain("43 132\r\n")
    })
  )

  it.scopedLive("a signal ends the program and its exit records the signal", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      const s = spec("sleep", ["100"])
      yield* host.spawn(s)
      yield* host.signal(s.id, "SIGKILL")
      const exited = exitedOf(yield* drain(host, s.id))
      expect(exited.exit).toMatchObject({ exitCode: null, signal: "SIGKILL" })
      expect(yield* Effect.flip(host.signal(s.id, "SIGINT"))).toMatchObject({ _tag: "PtyNotRunning" })
    })
  )

  it.scopedLive("SIGINT reaches the terminal's foreground job", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      // An interactive shell runs `sleep` in a process group of its own, in the foreground.
      const s = spec("/bin/sh", ["-i"], { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", PS1: "$ " } })
      const { pid } = yield* host.spawn(s)
      yield* readUntil(host, s.id, (text) => text.includes("$ "))
      yield* host.write(s.id, new TextEncoder().encode("sleep 100\n"))
      yield* Effect.suspend(() =>
        foregroundOf(pid) !== pid ? Effect.void : Effect.fail("sleep not started")
      ).pipe(Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds"))))
      yield* host.signal(s.id, "SIGINT")
      yield* Effect.suspend(() =>
        foregroundOf(pid) === pid ? Effect.void : Effect.fail("sleep still runs")
      ).pipe(Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds"))))
      yield* host.write(s.id, new TextEncoder().encode("echo status-$?\n"))
      const text = yield* readUntil(host, s.id, (text) => /status-\d+\r\n/.test(text))
      expect(text).toMatch(/status-130\r\n/)
      expect((yield* host.get(s.id)).exit).toBeNull()
    })
  )

  it.scopedLive("with no reader the ring overwrites, and a late reader gets a Gap, then the tail", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost({ ringBytes: 4096 })
      const s = spec("seq", ["1", "10000"])
      yield* host.spawn(s)
      const info = yield* host.get(s.id).pipe(
        Effect.filterOrFail((info) => info.exit !== null),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
      )
      const expected = seqOutput(10000)
      expect(info.seq).toBe(expected.length)

      const output = yield* drain(host, s.id)
      expect(output[0]).toMatchObject({ _tag: "Gap", from: 0, to: expected.length - 4096 })
      expectSameText(textOf(output), expected.slice(-4096))
      expect(output.filter((element) => element._tag === "Gap")).toHaveLength(1)
      expect(exitedOf(output).seq).toBe(expected.length)
    })
  )

  it.scopedLive("concurrent readers each get every byte once, in order", () =>
    Effect.gen(function* () {
      // A small ring: the program outruns it many times over, so the readers hold it back.
      const { host } = yield* startHost({ ringBytes: 64 * 1024 })
      const s = sh("printf ready; read x; seq 1 100000")
      yield* host.spawn(s)
      const first = yield* attachedReader(host, s.id)
      const second = yield* attachedReader(host, s.id)
      yield* host.write(s.id, enter)
      const [a, b] = yield* Fiber.join(Fiber.zip(first, second)).pipe(Effect.timeout("30 seconds"))

      const expected = `ready\r\n${seqOutput(100000)}`
      expect(a.some((element) => element._tag === "Gap")).toBe(false)
      expectSameText(textOf(a), expected)
      expect(bytesOf(b).equals(bytesOf(a))).toBe(true)
      expect(exitedOf(a).seq).toBe(expected.length)
      expect(exitedOf(b).seq).toBe(expected.length)
    })
  )

  it.scopedLive(
    "a slow reader loses nothing while the program writes far more than the ring holds",
    () =>
      Effect.gen(function* () {
        const ringBytes = 256 * 1024
        const { host } = yield* startHost({ ringBytes })
        const lines = 600_000
        const s = sh(`printf ready; read x; seq 1 ${lines}`)
        yield* host.spawn(s)
        // The reader is slower than the program: a short pause after every element.
        const fiber = yield* attachedReader(host, s.id, () => Effect.sleep("2 millis"))
        yield* host.write(s.id, enter)
        const output = yield* Fiber.join(fiber).pipe(Effect.timeout("50 seconds"))
        const text = textOf(output)
        const expected = seqOutput(lines)
        expect(expected.length).toBeGreaterThan(ringBytes * 10)
        expect(output.some((element) => element._tag === "Gap")).toBe(false)
        expectSameText(text, `ready\r\n${expected}`)
        expect(exitedOf(output).seq).toBe(text.length)
      }),
    60_000
  )

  it.scopedLive("a spawn that cannot start fails with its reason and leaves no fd behind", () =>
    Effect.gen(function* () {
      const { dataDir, host } = yield* startHost()
      yield* host.list
      const before = fdCount()
      const badCwd = yield* Effect.flip(host.spawn(spec("cat", [], { cwd: "/nonexistent/dir" })))
      expect(badCwd).toBeInstanceOf(PtySpawnFailed)
      expect(badCwd).toMatchObject({ reason: "cwd" })
      const fileCwd = yield* Effect.flip(host.spawn(spec("cat", [], { cwd: "/etc/hostname" })))
      expect(fileCwd).toMatchObject({ reason: "cwd" })
      const unknown = yield* Effect.flip(host.spawn(spec("no-such-program-vibes", [])))
      expect(unknown).toMatchObject({ reason: "command" })
      const plainFile = path.join(dataDir, "not-a-program")
      fs.writeFileSync(plainFile, "", { mode: 0o644 })
      const notExecutable = yield* Effect.flip(host.spawn(spec(plainFile, [])))
      expect(notExecutable).toMatchObject({ reason: "command" })
      const noPath = yield* Effect.flip(host.spawn(spec("cat", [], { env: { PATH: "/nonexistent" } })))
      expect(noPath).toMatchObject({ reason: "command" })
      const zeroCols = yield* Effect.flip(host.spawn(spec("cat", [], { cols: 0 })))
      expect(zeroCols).toMatchObject({ reason: "other" })
      expect(zeroCols.message).toMatch(/between 1 and 1000/)
      const hugeRows = yield* Effect.flip(host.spawn(spec("cat", [], { rows: 5000 })))
      expect(hugeRows).toMatchObject({ reason: "other" })
      // exec would fail in the child (E2BIG), or cut a string at its NUL: refused with the reason.
      const hugeArg = yield* Effect.flip(host.spawn(spec("echo", ["x".repeat(200 * 1024)])))
      expect(hugeArg).toMatchObject({ reason: "limit" })
      expect(hugeArg.message).toContain("E2BIG")
      const hugeEnv = yield* Effect.flip(
        host.spawn(
          spec("echo", [], {
            env: Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`V${i}`, "y".repeat(100 * 1024)]))
          })
        )
      )
      expect(hugeEnv).toMatchObject({ reason: "limit" })
      const nul = yield* Effect.flip(host.spawn(spec("echo", ["a\u0000b"])))
      expect(nul).toMatchObject({ reason: "other" })
      expect(nul.message).toContain("NUL")
      expect(yield* host.list).toEqual([])
      expect(fdCount()).toBe(before)

      const s = spec("cat", [])
      yield* host.spawn(s)
      expect(yield* Effect.flip(host.spawn(s))).toMatchObject({ _tag: "PtyAlreadyExists" })
    })
  )

  it.scopedLive("the socket and the pid file are private to the user", () =>
    Effect.gen(function* () {
      const { dataDir, socket } = yield* startHost()
      expect(fs.statSync(socket).mode & 0o777).toBe(0o600)
      const pidFile = pidFilePath(dataDir)
      expect(fs.statSync(pidFile).mode & 0o777).toBe(0o600)
      expect(JSON.parse(fs.readFileSync(pidFile, "utf8"))).toMatchObject({ pid: process.pid })
    })
  )

  it.scopedLive(
    "200 spawns and releases leave no process and no fd behind",
    () =>
      Effect.gen(function* () {
        const { host } = yield* startHost()
        yield* host.list
        const fds = fdCount()
        const processes = children().length
        yield* Effect.forEach(
          Array.from({ length: 200 }, (_, i) => i),
          (i) =>
            Effect.gen(function* () {
              const s = i % 2 === 0 ? spec("cat", []) : sh("exit 0")
              yield* host.spawn(s)
              yield* host.release(s.id)
            }),
          { concurrency: 8, discard: true }
        )
        expect(yield* host.list).toEqual([])
        expect(yield* settlesTo(() => children().length, processes)).toBe(processes)
        expect(yield* settlesTo(fdCount, fds)).toBe(fds)
      }),
    60_000
  )

  it.scopedLive("Release kills a program that ignores SIGHUP once the grace is over", () =>
    Effect.gen(function* () {
      const { host } = yield* startHost()
      const s = sh("trap '' HUP; printf ready; sleep 100")
      const info = yield* host.spawn(s)
      yield* readUntil(host, s.id, (text) => text.includes("ready"))
      yield* host.release(s.id).pipe(Effect.timeout("10 seconds"))
      expect(yield* settlesTo(() => isAlive(info.pid), false)).toBe(false)
      expect(yield* Effect.flip(host.get(s.id))).toMatchObject({ _tag: "PtyNotFound" })
    })
  )

  it.scopedLive("Shutdown kills every program, removes the socket and pid file, and ends the host", () =>
    Effect.gen(function* () {
      const { control, dataDir, host, server, socket } = yield* startHost()
      const plain = yield* host.spawn(spec("sleep", ["100"]))
      const stubborn = sh("trap '' HUP; printf ready; sleep 100")
      const { pid } = yield* host.spawn(stubborn)
      yield* readUntil(host, stubborn.id, (text) => text.includes("ready"))
      yield* control.shutdown
      const exit = yield* Fiber.await(server).pipe(Effect.timeout("10 seconds"))
      expect(Exit.isSuccess(exit)).toBe(true)
      expect(yield* settlesTo(() => isAlive(plain.pid), false)).toBe(false)
      expect(yield* settlesTo(() => isAlive(pid), false)).toBe(false)
      expect(fs.existsSync(socket)).toBe(false)
      expect(fs.existsSync(dataSocketPathOf(socket))).toBe(false)
      expect(fs.existsSync(pidFilePath(dataDir))).toBe(false)
      expect(yield* Effect.flip(host.list)).toMatchObject({ _tag: "PtyHostUnavailable" })
      expect(yield* Effect.flip(host.write(plain.id, new Uint8Array([1])))).toMatchObject({
        _tag: "PtyHostUnavailable"
      })
    })
  )

  it.scopedLive(
    "output streams share one data connection, each within its credit, and stop when cancelled",
    () =>
      Effect.gen(function* () {
        const { host } = yield* startHost()
        // Three programs print 3 MiB each (three windows): every byte arrives, in order, once.
        const programs = [1, 2, 3].map((n) => sh(`head -c ${3 * 1024 * 1024} /dev/zero | tr '\\0' '${n}'`))
        for (const program of programs) yield* host.spawn(program)
        const outputs = yield* Effect.forEach(programs, (program) => drain(host, program.id), {
          concurrency: "unbounded"
        })
        outputs.forEach((elements, index) => {
          const bytes = bytesOf(elements)
          expect(bytes.length).toBe(3 * 1024 * 1024)
          expect(bytes.every((byte) => byte === 0x31 + index)).toBe(true)
          expect(exitedOf(elements).seq).toBe(3 * 1024 * 1024)
          let next = 0
          for (const element of elements) {
            if (element._tag !== "Data") continue
            expect(element.seq).toBe(next)
            expect(element.data.length).toBeLessThanOrEqual(Protocol.maxDataFrameBytes)
            next += element.data.length
          }
        })
        // A reader that stops early cancels its stream; the PTY goes on. (The terminal's echo of a
        // line and cat's copy of it may interleave with the next line's: count, do not match order.)
        const s = spec("cat", [])
        yield* host.spawn(s)
        yield* host.write(s.id, new TextEncoder().encode("one\n"))
        expect(yield* readUntil(host, s.id, (text) => text.split("one\r\n").length === 3)).toBe(
          "one\r\none\r\n"
        )
        yield* host.write(s.id, new TextEncoder().encode("two\n"))
        const text = yield* readUntil(host, s.id, (text) => text.split("two\r\n").length === 3)
        expect(text.split("one\r\n").length).toBe(3)
      })
  )

  it.scopedLive("a data connection that breaks the protocol is closed, and the host serves others on", () =>
    Effect.gen(function* () {
      const { host, socket } = yield* startHost()
      const s = spec("cat", [])
      yield* host.spawn(s)
      const file = dataSocketPathOf(socket)
      expect(fs.statSync(file).mode & 0o777).toBe(0o600)
      const frames: ReadonlyArray<Buffer> = [
        // a length over the limit
        Buffer.from([0xff, 0xff, 0xff, 0xff, 1]),
        // an unknown type
        Buffer.from([0, 0, 0, 1, 99]),
        // a Subscribe too short to hold its stream and offset
        Buffer.from([0, 0, 0, 3, 1, 0, 0]),
        // a Write whose id runs past the frame
        Buffer.concat([Buffer.from([0, 0, 0, 7, 4, 0, 0, 0, 1, 0xff, 0xff])]),
        // a Subscribe from a negative offset
        Protocol.encodeClientFrame({ _tag: "Subscribe", stream: 1, from: 0, credit: 10, id: s.id }).fill(
          0xff,
          9,
          17
        )
      ]
      for (const frame of frames) {
        // The host closes the connection: the test waits for that close, bounded.
        yield* Effect.async<void>((resume) => {
          const client = net.createConnection({ path: file }, () => client.write(frame))
          client.on("data", () => undefined)
          client.once("close", () => resume(Effect.void))
          client.once("error", () => undefined)
          return Effect.sync(() => client.destroy())
        }).pipe(
          Effect.timeoutFail({
            duration: "10 seconds",
            onTimeout: () =>
              new Error(`the host kept a connection open after ${frame.toString("hex").slice(0, 40)}`)
          })
        )
      }
      yield* host.write(s.id, new TextEncoder().encode("still\n"))
      expect(yield* readUntil(host, s.id, (text) => text.includes("still\r\nstill\r\n"))).toBe(
        "still\r\nstill\r\n"
      )
    })
  )

  it("frames cut anywhere are read whole, and each side's frames survive encoding", () => {
    const sent: ReadonlyArray<Protocol.ClientFrame> = [
      { _tag: "Subscribe", stream: 7, from: 2 ** 40, credit: 1024, id: "sessión-1" },
      { _tag: "Credit", stream: 7, bytes: 65536 },
      { _tag: "Cancel", stream: 7 },
      { _tag: "Write", request: 9, id: "s", data: new Uint8Array([0, 1, 255]) }
    ]
    const wire = Buffer.concat(sent.map(Protocol.encodeClientFrame))
    for (const cut of [1, 2, 3, 5, 17, wire.length]) {
      const reader = new Protocol.FrameReader()
      const got: Array<Protocol.ClientFrame> = []
      for (let at = 0; at < wire.length; at += cut) {
        for (const { body, type } of reader.push(wire.subarray(at, at + cut))) {
          got.push(Protocol.decodeClientFrame(type, body))
        }
      }
      expect(
        got.map((frame) => (frame._tag === "Write" ? { ...frame, data: [...frame.data] } : frame))
      ).toEqual(sent.map((frame) => (frame._tag === "Write" ? { ...frame, data: [...frame.data] } : frame)))
    }
    const exited = Protocol.encodeHostFrame({
      _tag: "NotFound",
      stream: 3,
      message: "no PTY"
    })
    const reader = new Protocol.FrameReader()
    const [frame] = reader.push(exited)
    expect(frame !== undefined && Protocol.decodeHostFrame(frame.type, frame.body)).toEqual({
      _tag: "NotFound",
      stream: 3,
      message: "no PTY"
    })
  })

  it.scopedLive("an idle host exits by itself", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-pty-")
      const server = yield* PtyHostServer.run({ dataDir, idleExit: "300 millis" }).pipe(Effect.forkScoped)
      yield* PtyHostClient.ping(socketPath(dataDir)).pipe(
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
      )
      const exit = yield* Fiber.await(server).pipe(Effect.timeout("10 seconds"))
      expect(Exit.isSuccess(exit)).toBe(true)
      expect(fs.existsSync(socketPath(dataDir))).toBe(false)
    })
  )

  it.scopedLive(
    "with no running program and no client a host exits after its idle time, leaving the exits no server took",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir("vibes-pty-")
        const clientScope = yield* Scope.make()
        const { host, server } = yield* startHostIn(dataDir, { idleExit: "300 millis" }, clientScope)
        const s = sh("printf bye; exit 7")
        yield* host.spawn(s)
        expect(exitedOf(yield* drain(host, s.id)).exit.exitCode).toBe(7)
        // The host still holds the exited PTY (nobody released it) when its last client goes.
        expect((yield* host.list).map((pty) => pty.id)).toEqual([s.id])
        yield* Scope.close(clientScope, Exit.void)

        const exit = yield* Fiber.await(server).pipe(Effect.timeout("10 seconds"))
        expect(Exit.isSuccess(exit)).toBe(true)
        const files = yield* PtyExitRecords.readAll(dataDir)
        expect(files).toHaveLength(1)
        const file = files[0]?.file ?? ""
        expect(fs.statSync(file).mode & 0o777).toBe(0o600)

        const records = yield* PtyExitRecords.make({ dataDir })
        const record = Option.getOrThrow(yield* records.take(s.id))
        expect(record.exit).toMatchObject({ exitCode: 7, signal: null })
        expect(record.seq).toBe(3)
        expect(Buffer.from(record.tail).toString()).toBe("bye")
        // Taken once: the file is gone with its last record.
        expect(yield* records.take(s.id)).toEqual(Option.none())
        expect(fs.existsSync(file)).toBe(false)
      })
  )

  it.scopedLive("a host whose program still runs waits for its server beyond its idle time", () =>
    Effect.gen(function* () {
      const waitingScope = yield* Scope.make()
      const waiting = yield* startHostIn(
        yield* tempDir("vibes-pty-"),
        { idleExit: "300 millis" },
        waitingScope
      )
      const running = yield* waiting.host.spawn(spec("cat", []))
      yield* Scope.close(waitingScope, Exit.void)

      // A second host, idle from now on with the same idle time: once it has exited, the first
      // one has been without a client for longer than that.
      const witnessScope = yield* Scope.make()
      const witness = yield* startHostIn(
        yield* tempDir("vibes-pty-"),
        { idleExit: "300 millis" },
        witnessScope
      )
      yield* Scope.close(witnessScope, Exit.void)
      expect(Exit.isSuccess(yield* Fiber.await(witness.server).pipe(Effect.timeout("10 seconds")))).toBe(true)

      expect(waiting.server.unsafePoll()).toBeNull()
      expect((yield* PtyHostClient.ping(waiting.socket)).ptys).toBe(1)
      expect(isAlive(running.pid)).toBe(true)
    })
  )

  it.scopedLive("a host whose data dir is removed exits at once and ends its programs", () =>
    Effect.gen(function* () {
      const { dataDir, host, server } = yield* startHost({ idleExit: "1 hour" })
      const { pid } = yield* host.spawn(spec("cat", []))
      fs.rmSync(dataDir, { recursive: true, force: true })
      const exit = yield* Fiber.await(server).pipe(Effect.timeout("10 seconds"))
      expect(Exit.isSuccess(exit)).toBe(true)
      expect(yield* settlesTo(() => isAlive(pid), false)).toBe(false)
    })
  )

  it.scopedLive("a stale socket file is replaced, and a second host leaves a live one alone", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-pty-")
      fs.writeFileSync(path.join(dataDir, "pty-host.sock"), "left by a dead host")
      const { host, server } = yield* startHostIn(dataDir)
      const s = spec("cat", [])
      yield* host.spawn(s)

      yield* PtyHostServer.run({ dataDir }).pipe(Effect.timeout("10 seconds"))
      expect(server.unsafePoll()).toBeNull()
      expect((yield* host.get(s.id)).exit).toBeNull()
    })
  )
})

/** The foreground process group of the terminal of `pid`. */
const foregroundOf = (pid: number): number => Option.getOrThrow(Proc.stat(pid)).tpgid

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}
