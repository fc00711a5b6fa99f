/**
 * The PTY host process (`vibes pty-host`): owns the pseudo-terminals (node-pty) and serves them,
 * control over `<dataDir>/pty-host.sock` (`PtyHostRpcs`) and terminal bytes over
 * `<dataDir>/pty-data.sock` (`PtyDataProtocol`), so shells outlive `vibes serve`.
 *
 * Every PTY keeps a ring of its last output bytes, addressed by byte sequence numbers. A connected
 * reader that falls more than a high-water mark behind pauses the program (the PTY is not read, so
 * the program blocks on its next write) until every reader is back under a low-water mark: a slow
 * but connected server loses nothing. With no reader the ring simply overwrites its oldest bytes.
 *
 * Lifetime. The host outlives its server, and waits for it for as long as a program runs in one of
 * its PTYs. With no program running and no client, it exits after its idle time, even if it still
 * holds PTYs whose programs ended and that no server released: it first writes their exits into
 * the data dir (`PtyExitRecords`), where the next server on that data dir finds them. A host whose
 * socket is gone from its path (its data dir removed or replaced) can never be reached again: it
 * exits at once, running programs and all.
 */
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import * as NodePty from "node-pty"
import {
  Clock,
  Context,
  DateTime,
  Deferred,
  Duration,
  Effect,
  Layer,
  Option,
  Schedule,
  Schema,
  type Scope
} from "effect"
import * as NodeSocketServer from "@effect/platform-node/NodeSocketServer"
import * as RpcServer from "@effect/rpc/RpcServer"
import * as DataDir from "../datadir/DataDir.js"
import * as PtyExitRecords from "./PtyExitRecords.js"
import * as Protocol from "./PtyDataProtocol.js"
import {
  PtyAlreadyExists,
  PtyData,
  PtyExit,
  PtyExited,
  PtyGap,
  PtyInfo,
  PtyNotFound,
  PtyNotRunning,
  type PtyOutput,
  type PtySignal,
  PtySpawnFailed,
  type PtySpec
} from "./PtyHost.js"
import { maxArgStringBytes } from "../../rpc/Text.js"
import * as PtyHostClient from "./PtyHostClient.js"
import {
  isRunning,
  layerSerialization,
  PidFile,
  pidFilePath,
  PingResult,
  PtyHostRpcs,
  runningHostPid,
  socketPath
} from "./PtyHostRpcs.js"
import { defaultIdleExit, defaultRingBytes } from "./PtyHostDefaults.js"
import * as Proc from "../proc/Proc.js"

/** The host could not start (data dir, socket). */
export class PtyHostServerError extends Schema.TaggedError<PtyHostServerError>()("PtyHostServerError", {
  message: Schema.String
}) {}

/** Options of the host. */
export interface Options {
  /** The vibes data directory; the socket and pid file live in it. */
  readonly dataDir: string
  /** Output bytes kept per PTY. Default 8 MiB. */
  readonly ringBytes?: number
  /** The host exits after this long with no running program and no client. Default 30 s. */
  readonly idleExit?: Duration.DurationInput
}

/** Largest size, in columns or rows, a PTY may have. */
export const maxDimension = 1000

/** Size of the ring's first allocation and of the buffer that drains a PTY at its end. */
const maxChunkBytes = 64 * 1024

/** How long a program gets between SIGHUP and SIGKILL. */
const killGrace = Duration.seconds(2)

/** How often the host checks that its socket is still where a server looks for it. */
const homeCheckInterval = Duration.millis(250)

// ring ------------------------------------------------------------------------------------

/**
 * The last `capacity` bytes written, addressed by sequence number (bytes written before them).
 * The buffer grows on demand up to `capacity`, so a quiet PTY costs little.
 */
class Ring {
  private buffer: Buffer
  private startSeq = 0
  private endSeq = 0

  constructor(private readonly capacity: number) {
    this.buffer = Buffer.allocUnsafe(Math.min(capacity, maxChunkBytes))
  }

  /** Sequence number of the oldest byte held. */
  get start(): number {
    return this.startSeq
  }

  /** Sequence number of the next byte: the total written. */
  get end(): number {
    return this.endSeq
  }

  write(data: Uint8Array): void {
    const held = this.endSeq - this.startSeq
    const needed = Math.min(this.capacity, held + data.length)
    if (needed > this.buffer.length) {
      this.resize(Math.min(this.capacity, Math.max(needed, this.buffer.length * 2)))
    }
    const keep = Math.min(data.length, this.buffer.length)
    const newEnd = this.endSeq + data.length
    this.copyIn(newEnd - keep, data.subarray(data.length - keep))
    this.endSeq = newEnd
    this.startSeq = Math.max(this.startSeq, newEnd - this.buffer.length)
  }

  /** A copy of up to `max` bytes from `from` (at least `start`). */
  read(from: number, max: number): Buffer {
    const begin = Math.max(from, this.startSeq)
    const count = Math.max(0, Math.min(this.endSeq, begin + max) - begin)
    const out = Buffer.allocUnsafe(count)
    const at = begin % this.buffer.length
    const first = Math.min(count, this.buffer.length - at)
    this.buffer.copy(out, 0, at, at + first)
    if (count > first) this.buffer.copy(out, first, 0, count - first)
    return out
  }

  private resize(length: number): void {
    const held = this.read(this.startSeq, this.endSeq - this.startSeq)
    this.buffer = Buffer.allocUnsafe(length)
    this.copyIn(this.startSeq, held)
  }

  private copyIn(seq: number, bytes: Uint8Array): void {
    const at = seq % this.buffer.length
    const first = Math.min(bytes.length, this.buffer.length - at)
    this.buffer.set(bytes.subarray(0, first), at)
    if (bytes.length > first) this.buffer.set(bytes.subarray(first), 0)
  }
}

// processes -------------------------------------------------------------------------------

const signalNames = new Map(Object.entries(os.constants.signals).map(([name, number]) => [number, name]))

const exitOf = (exitCode: number, signal: number | undefined): PtyExit =>
  signal !== undefined && signal > 0
    ? new PtyExit({ exitCode: null, signal: signalNames.get(signal) ?? `SIG${signal}` })
    : new PtyExit({ exitCode, signal: null })

const describeExit = (exit: PtyExit): string =>
  exit.signal !== null ? `killed by ${exit.signal}` : `exit code ${exit.exitCode ?? "?"}`

/** Sends `signal` to a process (negative: a process group); false when nothing got it. */
const send = (target: number, signal: NodeJS.Signals | 0): boolean => {
  try {
    process.kill(target, signal)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** The terminal's foreground process group (field 8, `tpgid`, of /proc/<pid>/stat), Linux only. */
const foregroundGroup = (pid: number): Option.Option<number> =>
  Option.flatMap(Proc.stat(pid), (stat) => (stat.tpgid > 0 ? Option.some(stat.tpgid) : Option.none()))

/** node-pty's `destroy` (closes the master fd) is on the Unix terminal but not in its typings. */
const destroyPty = (terminal: NodePty.IPty): void => {
  if ("destroy" in terminal && typeof terminal.destroy === "function") terminal.destroy()
}

/** What node-pty's Unix terminal has beyond its typings: the master fd and its stream's events. */
interface UnixTerminal {
  readonly fd: number
  on(event: "end", listener: () => void): void
}

const isUnixTerminal = (terminal: NodePty.IPty): terminal is NodePty.IPty & UnixTerminal =>
  "fd" in terminal && typeof terminal.fd === "number" && "on" in terminal && typeof terminal.on === "function"

/**
 * libuv takes a short read after POLLHUP for the end of a PTY master (libuv#4992), so node-pty
 * drops what a program wrote just before it exited (node-pty#726). On that early end the rest is
 * still in the kernel: read it synchronously, before node-pty closes the fd.
 */
const drainOnEarlyEnd = (terminal: NodePty.IPty, onData: (chunk: Buffer) => void): void => {
  if (!isUnixTerminal(terminal)) return
  const { fd } = terminal
  terminal.on("end", () => {
    const buffer = Buffer.allocUnsafe(maxChunkBytes)
    for (;;) {
      let count: number
      try {
        count = fs.readSync(fd, buffer)
      } catch {
        // EIO once the kernel has nothing left (EAGAIN if the slave is somehow open again).
        return
      }
      if (count <= 0) return
      onData(Buffer.from(buffer.subarray(0, count)))
    }
  })
}

const isExecutableFile = (file: string): boolean => {
  try {
    fs.accessSync(file, fs.constants.X_OK)
    return fs.statSync(file).isFile()
  } catch {
    return false
  }
}

/**
 * What exec takes of arguments and environment together: ARG_MAX with the default 8 MiB stack
 * limit is 2 MiB (a quarter of the stack), pointers included; a little is left for the kernel's own.
 */
const execTotalBytes = 2 * 1024 * 1024 - 4096

/** Checks what node-pty would only find out in the child, where a failure is just an exit code. */
const validate = (spec: PtySpec): Option.Option<PtySpawnFailed> => {
  const failed = (reason: PtySpawnFailed["reason"], message: string) =>
    Option.some(new PtySpawnFailed({ id: spec.id, reason, message }))
  const sizeOk = (n: number) => Number.isInteger(n) && n >= 1 && n <= maxDimension
  if (!sizeOk(spec.cols) || !sizeOk(spec.rows)) {
    return failed(
      "other",
      `the terminal size ${spec.cols}x${spec.rows} is out of range: cols and rows must be between 1 and ${maxDimension}`
    )
  }
  const strings = [
    spec.file,
    spec.cwd,
    ...spec.args,
    ...Object.entries(spec.env).map(([k, v]) => `${k}=${v}`)
  ]
  if (strings.some((text) => text.includes("\u0000"))) {
    return failed("other", "an argument, environment entry or the working directory contains a NUL byte")
  }
  // exec would fail with E2BIG in the child, where it is only an exit code.
  let total = 0
  for (const text of strings) {
    const size = Buffer.byteLength(text) + 1
    if (size > maxArgStringBytes) {
      return failed(
        "limit",
        `an argument or environment entry is ${size - 1} bytes; the kernel takes at most ${maxArgStringBytes - 1} (E2BIG)`
      )
    }
    total += size + 8
  }
  if (total > execTotalBytes) {
    return failed(
      "limit",
      `the arguments and environment take ${total} bytes; the kernel takes about ${execTotalBytes} (E2BIG)`
    )
  }
  if (!path.isAbsolute(spec.cwd)) return failed("cwd", `the working directory '${spec.cwd}' is not absolute`)
  let isDirectory = false
  try {
    isDirectory = fs.statSync(spec.cwd).isDirectory()
  } catch {
    return failed("cwd", `the working directory '${spec.cwd}' does not exist`)
  }
  if (!isDirectory) return failed("cwd", `the working directory '${spec.cwd}' is not a directory`)
  if (spec.file === "") return failed("command", "no program to start")
  if (spec.file.includes("/")) {
    return isExecutableFile(path.resolve(spec.cwd, spec.file))
      ? Option.none()
      : failed("command", `'${spec.file}' is not an executable file`)
  }
  // execvp's own fallback when PATH is unset.
  const searchPath = spec.env["PATH"] ?? "/bin:/usr/bin"
  const found = searchPath
    .split(":")
    .some((dir) => isExecutableFile(path.resolve(spec.cwd, dir === "" ? "." : dir, spec.file)))
  return found ? Option.none() : failed("command", `'${spec.file}' was not found in PATH (${searchPath})`)
}

// registry --------------------------------------------------------------------------------

/** A reader of a PTY's output: the sequence number of the next byte it takes. */
interface Reader {
  next: number
}

/** One reader of a PTY, driven by its owner (a data connection's stream). */
export interface Tap {
  /**
   * The next element, of at most `max` data bytes: `undefined` while the reader has everything and
   * the program runs; `Exited` last; `PtyNotFound` once the PTY is released.
   */
  readonly poll: (max: number) => PtyOutput | PtyNotFound | undefined
  /** Calls `callback` once, when there is news (output, the exit, the release). */
  readonly onNews: (callback: () => void) => void
  /** The reader is gone. */
  readonly close: () => void
}

interface Entry {
  readonly id: string
  readonly terminal: NodePty.IPty
  readonly pid: number
  readonly ring: Ring
  readonly readers: Set<Reader>
  /** Callbacks of readers waiting for output, an exit or the release. */
  readonly waiters: Set<() => void>
  readonly listeners: ReadonlyArray<NodePty.IDisposable>
  cols: number
  rows: number
  exit: PtyExit | null
  exitedAt: DateTime.Utc | null
  paused: boolean
  /** While paused: checks whether the program is gone, to read its last bytes before node-pty drops them. */
  watchdog: ReturnType<typeof setInterval> | undefined
  /** The program is gone but its last output may still be unread: never pause again. */
  draining: boolean
  /** Released and freed: readers still waiting end. */
  freed: boolean
}

const infoOf = (entry: Entry): PtyInfo =>
  new PtyInfo({
    id: entry.id,
    pid: entry.pid,
    cols: entry.cols,
    rows: entry.rows,
    seq: entry.ring.end,
    exit: entry.exit
  })

const notFound = (id: string) =>
  new PtyNotFound({
    id,
    message: `no PTY '${id}' on this host (never created, released, or lost with a previous host)`
  })

const notRunning = (entry: Entry, exit: PtyExit) =>
  new PtyNotRunning({
    id: entry.id,
    message: `the program in PTY '${entry.id}' has exited (${describeExit(exit)})`
  })

/** The PTYs of a host and what can be done with them. */
interface Registry {
  readonly size: () => number
  /** PTYs whose program still runs. */
  readonly running: () => number
  /** The exits of the PTYs whose program has ended and that no one released. */
  readonly exitRecords: () => ReadonlyArray<PtyExitRecords.PtyExitRecord>
  readonly spawn: (spec: PtySpec) => Effect.Effect<PtyInfo, PtySpawnFailed | PtyAlreadyExists>
  /** Writes the program's input. */
  readonly write: (id: string, data: Uint8Array) => PtyNotFound | PtyNotRunning | undefined
  readonly resize: (
    id: string,
    cols: number,
    rows: number
  ) => Effect.Effect<void, PtyNotFound | PtyNotRunning>
  readonly signal: (id: string, signal: PtySignal) => Effect.Effect<void, PtyNotFound | PtyNotRunning>
  /** A reader of the PTY's output from byte `from` (the oldest held, if `from` is older: a `Gap` first). */
  readonly tap: (id: string, from: number) => Tap | PtyNotFound
  readonly get: (id: string) => Effect.Effect<PtyInfo, PtyNotFound>
  readonly list: Effect.Effect<ReadonlyArray<PtyInfo>>
  readonly release: (id: string) => Effect.Effect<void>
  readonly releaseAll: Effect.Effect<void>
}

const makeRegistry = (ringBytes: number): Effect.Effect<Registry, never, Scope.Scope> =>
  Effect.gen(function* () {
    const entries = new Map<string, Entry>()
    const highWater = Math.max(1, Math.min(4 * 1024 * 1024, Math.floor(ringBytes / 4)))
    const lowWater = Math.floor(highWater / 4)

    /**
     * Sends `signal` to the program's process group. Right after the fork the child may not have
     * its own group yet (forkpty's setsid): then it gets it alone, which is safe while its pid
     * is not reaped (it cannot have been reused).
     */
    const signalGroup = (entry: Entry, signal: NodeJS.Signals | 0): boolean =>
      send(-entry.pid, signal) || (entry.exit === null && send(entry.pid, signal))

    const wake = (entry: Entry) => {
      const waiters = [...entry.waiters]
      entry.waiters.clear()
      for (const waiter of waiters) waiter()
    }

    const maxLag = (entry: Entry) => {
      let lag = 0
      for (const reader of entry.readers) lag = Math.max(lag, entry.ring.end - reader.next)
      return lag
    }

    const resume = (entry: Entry) => {
      if (!entry.paused) return
      entry.paused = false
      if (entry.watchdog !== undefined) clearInterval(entry.watchdog)
      entry.watchdog = undefined
      entry.terminal.resume()
    }

    const pause = (entry: Entry) => {
      if (entry.paused || entry.draining || entry.exit !== null) return
      entry.paused = true
      entry.terminal.pause()
      // node-pty destroys the PTY 200 ms after the program is reaped, unread bytes and all.
      entry.watchdog = setInterval(() => {
        if (!isRunning(entry.pid)) {
          entry.draining = true
          resume(entry)
        }
      }, 40)
    }

    const afterRead = (entry: Entry) => {
      if (entry.paused && maxLag(entry) <= lowWater) resume(entry)
    }

    const lookup = (id: string) =>
      Effect.suspend(() => {
        const entry = entries.get(id)
        return entry === undefined ? Effect.fail(notFound(id)) : Effect.succeed(entry)
      })

    const running = (id: string) =>
      Effect.flatMap(lookup(id), (entry) =>
        entry.exit === null ? Effect.succeed(entry) : Effect.fail(notRunning(entry, entry.exit))
      )

    const spawn = (spec: PtySpec) =>
      Effect.suspend((): Effect.Effect<PtyInfo, PtySpawnFailed | PtyAlreadyExists> => {
        if (entries.has(spec.id)) {
          return Effect.fail(
            new PtyAlreadyExists({ id: spec.id, message: `a PTY '${spec.id}' already exists` })
          )
        }
        const invalid = validate(spec)
        if (Option.isSome(invalid)) return Effect.fail(invalid.value)
        let terminal: NodePty.IPty
        try {
          const [file, ...args] = [...(spec.wrapper ?? []), spec.file, ...spec.args]
          terminal = NodePty.spawn(file ?? spec.file, args, {
            // node-pty sets TERM to `name`: the one the spec asks for, else what the screen model is.
            name: spec.env["TERM"] ?? "xterm-256color",
            cols: spec.cols,
            rows: spec.rows,
            cwd: spec.cwd,
            env: { ...spec.env },
            encoding: null
          })
        } catch (cause) {
          const message = cause instanceof Error ? cause.message : String(cause)
          return Effect.fail(
            new PtySpawnFailed({
              id: spec.id,
              reason: /EMFILE|ENFILE|EAGAIN|ENOSPC|forkpty/.test(message) ? "limit" : "other",
              message: `cannot start '${spec.file}': ${message}`
            })
          )
        }
        const listeners: Array<NodePty.IDisposable> = []
        const entry: Entry = {
          id: spec.id,
          terminal,
          pid: terminal.pid,
          ring: new Ring(ringBytes),
          readers: new Set(),
          waiters: new Set(),
          listeners,
          cols: spec.cols,
          rows: spec.rows,
          exit: null,
          exitedAt: null,
          paused: false,
          watchdog: undefined,
          draining: false,
          freed: false
        }
        const received = (chunk: Buffer) => {
          if (entry.freed) return
          entry.ring.write(chunk)
          wake(entry)
          if (maxLag(entry) > highWater) pause(entry)
        }
        // With `encoding: null` node-pty hands out Buffers, though its typings say string.
        const onData = terminal.onData as unknown as NodePty.IEvent<Buffer>
        drainOnEarlyEnd(terminal, received)
        listeners.push(
          onData(received),
          terminal.onExit(({ exitCode, signal }) => {
            entry.exit = exitOf(exitCode, signal)
            entry.exitedAt = DateTime.unsafeNow()
            resume(entry)
            wake(entry)
          })
        )
        entries.set(spec.id, entry)
        return Effect.succeed(infoOf(entry))
      })

    /**
     * The next element for `reader`, of at most `max` data bytes: `undefined` while it has
     * everything and the program runs; `Exited` last; `PtyNotFound` once the PTY is released.
     */
    const poll = (entry: Entry, reader: Reader, max: number): PtyOutput | PtyNotFound | undefined => {
      const { ring } = entry
      if (reader.next < ring.start) {
        const gap = new PtyGap({ from: reader.next, to: ring.start })
        reader.next = ring.start
        return gap
      }
      if (reader.next < ring.end) {
        const data = ring.read(reader.next, max)
        const element = new PtyData({ seq: reader.next, data }, { disableValidation: true })
        reader.next += data.length
        afterRead(entry)
        return element
      }
      if (entry.exit !== null) {
        entry.readers.delete(reader)
        return new PtyExited({ seq: ring.end, exit: entry.exit })
      }
      if (entry.freed) return notFound(entry.id)
      return undefined
    }

    const tap = (id: string, from: number): Tap | PtyNotFound => {
      const entry = entries.get(id)
      if (entry === undefined) return notFound(id)
      const reader: Reader = { next: Math.max(0, Math.min(from, entry.ring.end)) }
      entry.readers.add(reader)
      if (maxLag(entry) > highWater) pause(entry)
      let waiter: (() => void) | undefined
      return {
        poll: (max) => poll(entry, reader, max),
        onNews: (callback) => {
          if (waiter !== undefined) return
          waiter = () => {
            waiter = undefined
            callback()
          }
          entry.waiters.add(waiter)
        },
        close: () => {
          if (waiter !== undefined) entry.waiters.delete(waiter)
          waiter = undefined
          entry.readers.delete(reader)
          afterRead(entry)
        }
      }
    }

    const writeNow = (id: string, data: Uint8Array): PtyNotFound | PtyNotRunning | undefined => {
      const entry = entries.get(id)
      if (entry === undefined) return notFound(id)
      if (entry.exit !== null) return notRunning(entry, entry.exit)
      entry.terminal.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength))
      return undefined
    }

    /**
     * Resolves with true once `done` holds, or with false after `within`. The deadline is a timer
     * rather than `Effect.timeout`: this runs in finalizers, where a timeout cannot interrupt.
     */
    const awaitCondition = (entry: Entry, done: () => boolean, within: Duration.Duration) =>
      Effect.async<boolean>((resume) => {
        let finished = false
        const finish = (value: boolean) => {
          if (finished) return
          finished = true
          clearInterval(poll)
          clearTimeout(deadline)
          entry.waiters.delete(check)
          resume(Effect.succeed(value))
        }
        const check = () => {
          if (done()) finish(true)
          else if (!finished) entry.waiters.add(check)
        }
        // Group membership has no event; the exit has one (through `waiters`).
        const poll = setInterval(check, 25)
        const deadline = setTimeout(() => finish(false), Duration.toMillis(within))
        check()
        return Effect.sync(() => {
          finished = true
          clearInterval(poll)
          clearTimeout(deadline)
          entry.waiters.delete(check)
        })
      })

    /** SIGHUP to the program's group, SIGKILL after a grace, then the PTY is freed. */
    const terminate = (entry: Entry) =>
      Effect.gen(function* () {
        if (entry.exit === null || signalGroup(entry, 0)) {
          signalGroup(entry, "SIGHUP")
          resume(entry)
          const gone = yield* awaitCondition(
            entry,
            () => entry.exit !== null && !signalGroup(entry, 0),
            killGrace
          )
          if (!gone) {
            signalGroup(entry, "SIGKILL")
            yield* awaitCondition(entry, () => entry.exit !== null, killGrace)
          }
        }
        resume(entry)
        for (const listener of entry.listeners) listener.dispose()
        destroyPty(entry.terminal)
        entry.freed = true
        wake(entry)
      }).pipe(Effect.uninterruptible)

    const release = (id: string) =>
      Effect.suspend(() => {
        const entry = entries.get(id)
        if (entry === undefined) return Effect.void
        entries.delete(id)
        return terminate(entry)
      })

    const releaseAll = Effect.suspend(() => {
      const all = [...entries.values()]
      entries.clear()
      return Effect.forEach(all, terminate, { concurrency: "unbounded", discard: true })
    })

    yield* Effect.addFinalizer(() => releaseAll)

    const exitRecords = () =>
      [...entries.values()].flatMap((entry) => {
        if (entry.exit === null || entry.exitedAt === null) return []
        const { ring } = entry
        const from = Math.max(ring.start, ring.end - PtyExitRecords.maxTailBytes)
        return [
          new PtyExitRecords.PtyExitRecord({
            id: entry.id,
            exit: entry.exit,
            exitedAt: entry.exitedAt,
            seq: ring.end,
            tail: ring.read(from, ring.end - from)
          })
        ]
      })

    return {
      size: () => entries.size,
      running: () => {
        let count = 0
        for (const entry of entries.values()) if (entry.exit === null) count++
        return count
      },
      exitRecords,
      spawn,
      write: writeNow,
      resize: (id, cols, rows) =>
        Effect.flatMap(running(id), (entry) => {
          const ok = (n: number) => Number.isInteger(n) && n >= 1 && n <= maxDimension
          if (!ok(cols) || !ok(rows)) {
            return Effect.dieMessage(
              `the terminal size ${cols}x${rows} is out of range: cols and rows must be between 1 and ${maxDimension}`
            )
          }
          return Effect.try({
            try: () => {
              entry.terminal.resize(cols, rows)
              entry.cols = cols
              entry.rows = rows
            },
            // The fd is closed: the program has just exited.
            catch: (cause) =>
              new PtyNotRunning({ id, message: `the PTY '${id}' is closing: ${String(cause)}` })
          })
        }),
      signal: (id, signal) =>
        Effect.flatMap(running(id), (entry) =>
          Effect.sync(() => {
            signalGroup(entry, signal)
            const foreground = foregroundGroup(entry.pid)
            if (Option.isSome(foreground) && foreground.value !== entry.pid) send(-foreground.value, signal)
          })
        ),
      tap,
      get: (id) => Effect.map(lookup(id), infoOf),
      list: Effect.sync(() => [...entries.values()].map(infoOf)),
      release,
      releaseAll
    } satisfies Registry
  })

// data plane ------------------------------------------------------------------------------

/** One output stream of a data connection. */
interface Subscription {
  readonly tap: Tap
  credit: number
}

/**
 * Serves one server's data connection (`PtyDataProtocol`): output streams sent as credit allows,
 * and input written as it comes. A frame that breaks the protocol closes the connection.
 */
const serveDataConnection = (registry: Registry, socket: net.Socket): void => {
  const streams = new Map<number, Subscription>()
  const reader = new Protocol.FrameReader()
  const send = (message: Protocol.HostFrame) => {
    if (!socket.destroyed) socket.write(Protocol.encodeHostFrame(message))
  }

  const end = (stream: number) => {
    const subscription = streams.get(stream)
    if (subscription === undefined) return
    streams.delete(stream)
    subscription.tap.close()
  }

  /** Sends what the stream's reader has, as far as its credit goes; then waits for news. */
  const pump = (stream: number, subscription: Subscription) => {
    if (socket.destroyed) return
    let sent = false
    while (subscription.credit > 0) {
      const output = subscription.tap.poll(Math.min(subscription.credit, Protocol.maxDataFrameBytes))
      if (output === undefined) {
        subscription.tap.onNews(() => {
          if (streams.get(stream) === subscription) pump(stream, subscription)
        })
        break
      }
      if (!sent) {
        socket.cork()
        sent = true
      }
      if (output._tag === "PtyNotFound") {
        send({ _tag: "NotFound", stream, message: output.message })
        end(stream)
        break
      }
      if (output._tag === "Data") {
        subscription.credit -= output.data.length
        socket.write(Protocol.dataHeader(stream, output.seq, output.data.length))
        socket.write(output.data)
        continue
      }
      send({ _tag: "Output", stream, output })
      if (output._tag === "Exited") {
        end(stream)
        break
      }
    }
    if (sent) socket.uncork()
  }

  const handle = (message: Protocol.ClientFrame) => {
    switch (message._tag) {
      case "Subscribe": {
        if (streams.has(message.stream)) {
          throw new Protocol.ProtocolViolation(`stream ${message.stream} is already open`)
        }
        const tap = registry.tap(message.id, message.from)
        if (tap instanceof PtyNotFound) {
          send({ _tag: "NotFound", stream: message.stream, message: tap.message })
          return
        }
        const subscription: Subscription = { tap, credit: message.credit }
        streams.set(message.stream, subscription)
        pump(message.stream, subscription)
        return
      }
      case "Credit": {
        const subscription = streams.get(message.stream)
        if (subscription === undefined) return
        subscription.credit += message.bytes
        pump(message.stream, subscription)
        return
      }
      case "Cancel":
        end(message.stream)
        return
      case "Write": {
        const failed = registry.write(message.id, message.data)
        send(
          failed === undefined
            ? { _tag: "Written", request: message.request }
            : {
                _tag: "WriteFailed",
                request: message.request,
                reason: failed._tag === "PtyNotFound" ? "NotFound" : "NotRunning",
                message: failed.message
              }
        )
        return
      }
    }
  }

  socket.on("data", (chunk: Buffer) => {
    try {
      for (const { body, type } of reader.push(chunk)) handle(Protocol.decodeClientFrame(type, body))
    } catch (error) {
      if (!(error instanceof Protocol.ProtocolViolation)) throw error
      socket.destroy()
    }
  })
  socket.on("close", () => {
    for (const stream of [...streams.keys()]) end(stream)
  })
  socket.on("error", () => undefined)
}

/** Listens on the data socket for as long as the scope lives; answers how many connections it has. */
const listenData = (registry: Registry, file: string) =>
  Effect.acquireRelease(
    Effect.async<{ readonly server: net.Server; readonly sockets: Set<net.Socket> }, PtyHostServerError>(
      (resume) => {
        const sockets = new Set<net.Socket>()
        const server = net.createServer((socket) => {
          sockets.add(socket)
          socket.once("close", () => sockets.delete(socket))
          serveDataConnection(registry, socket)
        })
        server.once("error", (cause) =>
          resume(Effect.fail(fail(`cannot listen on ${file}: ${cause.message}`)))
        )
        server.listen(file, () => {
          try {
            fs.chmodSync(file, 0o600)
          } catch (cause) {
            server.close()
            return resume(Effect.fail(fail(`cannot restrict ${file}: ${String(cause)}`)))
          }
          resume(Effect.succeed({ server, sockets }))
        })
      }
    ),
    ({ server, sockets }) =>
      Effect.async<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ sockets }) => ({ connections: () => sockets.size })))

// process ---------------------------------------------------------------------------------

const fail = (message: string) => new PtyHostServerError({ message })

const writePidFile = (file: string, startedAt: DateTime.Utc) =>
  Effect.try({
    try: () => {
      const content = Schema.encodeSync(PidFile)({
        pid: process.pid,
        startedAt: DateTime.formatIso(startedAt)
      })
      fs.writeFileSync(file, JSON.stringify(content) + "\n", { mode: 0o600 })
      fs.chmodSync(file, 0o600)
    },
    catch: (cause) => fail(`cannot write ${file}: ${String(cause)}`)
  })

/** Removes the pid file if it is ours (the socket file goes when the server closes). */
const removePidFile = (pidFile: string) =>
  Effect.sync(() => {
    try {
      const parsed = Schema.decodeUnknownOption(Schema.parseJson(PidFile))(fs.readFileSync(pidFile, "utf8"))
      if (Option.isSome(parsed) && parsed.value.pid === process.pid) fs.rmSync(pidFile, { force: true })
    } catch {
      // already gone
    }
  })

/** Writes `records` for the next server on `dataDir`; a failure is only logged (the host is going anyway). */
const leaveExitRecords = (dataDir: string, records: ReadonlyArray<PtyExitRecords.PtyExitRecord>) =>
  PtyExitRecords.write(dataDir, records).pipe(
    Effect.flatMap(
      Option.match({
        onNone: () => Effect.void,
        onSome: (file) =>
          Effect.logInfo(`wrote the exits of ${records.length} PTYs no server released to ${file}`)
      })
    ),
    Effect.catchAll((error) =>
      Effect.logWarning(`the exits of ${records.length} PTYs are lost: ${error.message}`)
    )
  )

/** Waits, polling, until `pid` has exited; false if it still runs after `within`. */
const awaitExit = (pid: number, within: Duration.DurationInput) =>
  Effect.suspend(() => (isRunning(pid) ? Effect.fail("running") : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("25 millis").pipe(Schedule.upTo(within))),
    Effect.as(true),
    Effect.orElseSucceed(() => false)
  )

/** Polls until the host has had no running program and no client for `idleExit`. */
const idleFor = (idleExit: Duration.Duration, busy: Effect.Effect<boolean>) =>
  Effect.gen(function* () {
    const idleMillis = Duration.toMillis(idleExit)
    const tick = Duration.millis(Math.min(1000, Math.max(10, idleMillis / 4)))
    let idleSince: number | undefined
    for (;;) {
      yield* Effect.sleep(tick)
      const now = yield* Clock.currentTimeMillis
      if (yield* busy) {
        idleSince = undefined
      } else {
        idleSince ??= now
        if (now - idleSince >= idleMillis) return
      }
    }
  })

/** The file at `file`, to tell it from another one put at the same path later. */
interface FileIdentity {
  readonly dev: number
  readonly ino: number
}

const identityOf = (file: string): Option.Option<FileIdentity> => {
  try {
    const { dev, ino } = fs.statSync(file)
    return Option.some({ dev, ino })
  } catch {
    return Option.none()
  }
}

/** Resolves once `file` is no longer at its path: removed (with its directory), or replaced. */
const gone = (file: string, identity: FileIdentity) =>
  Effect.sync(() =>
    Option.match(identityOf(file), {
      onNone: () => true,
      onSome: (now) => now.dev !== identity.dev || now.ino !== identity.ino
    })
  ).pipe(Effect.repeat({ schedule: Schedule.spaced(homeCheckInterval), until: (isGone) => isGone }))

/**
 * Runs the host until it is told to stop (`Shutdown`), has had no running program and no client
 * for `idleExit`, finds its socket gone (its data dir removed), or is interrupted (SIGTERM/SIGINT
 * through `NodeRuntime.runMain`). Every way out first writes the exits of the PTYs whose program
 * ended and that no server released into the data dir (`PtyExitRecords`), then kills every PTY's
 * process group (SIGHUP, SIGKILL after a grace) and removes the socket and pid file. When another
 * live host already answers on the socket, it returns at once.
 */
export const run = (options: Options): Effect.Effect<void, PtyHostServerError> =>
  Effect.gen(function* () {
    const ringBytes = options.ringBytes ?? defaultRingBytes
    if (!Number.isInteger(ringBytes) || ringBytes < 1) {
      return yield* fail(`the ring size must be a positive number of bytes, got ${ringBytes}`)
    }
    const idleExit = Duration.decode(options.idleExit ?? defaultIdleExit)
    const socket = socketPath(options.dataDir)
    const pidFile = pidFilePath(options.dataDir)
    yield* DataDir.ensure(options.dataDir).pipe(Effect.mapError((error) => fail(error.message)))

    const other = yield* PtyHostClient.ping(socket).pipe(Effect.option)
    if (Option.isSome(other)) {
      yield* Effect.logInfo(`another PTY host (pid ${other.value.pid}) is serving ${socket}; exiting`)
      return
    }
    // A host that no longer answers may be closing: taking its socket now would let its close
    // unlink ours.
    const closing = runningHostPid(options.dataDir)
    if (Option.isSome(closing)) {
      const gone = yield* awaitExit(closing.value, "10 seconds")
      if (!gone) {
        return yield* fail(
          `the PTY host with pid ${closing.value} holds ${socket} but does not answer; stop it (kill ${closing.value})`
        )
      }
    }
    // Nothing answers on them: sockets left by a host that died.
    const dataSocket = Protocol.dataSocketPathOf(socket)
    fs.rmSync(socket, { force: true })
    fs.rmSync(dataSocket, { force: true })

    const startedAt = yield* DateTime.now
    const registry = yield* makeRegistry(ringBytes)
    const stop = yield* Deferred.make<void>()

    const handlers = PtyHostRpcs.toLayer({
      Spawn: (spec) => registry.spawn(spec),
      Resize: ({ cols, id, rows }) => registry.resize(id, cols, rows),
      Signal: ({ id, signal }) => registry.signal(id, signal),
      Get: ({ id }) => registry.get(id),
      List: () => registry.list,
      Release: ({ id }) => registry.release(id),
      Ping: () => Effect.sync(() => new PingResult({ pid: process.pid, startedAt, ptys: registry.size() })),
      Shutdown: () => Deferred.succeed(stop, undefined)
    })

    // A bad request fails only itself instead of ending every call of its client.
    const server = RpcServer.layer(PtyHostRpcs, { disableFatalDefects: true, spanPrefix: "PtyHost" }).pipe(
      Layer.provide(handlers),
      Layer.provideMerge(RpcServer.layerProtocolSocketServer),
      Layer.provide(layerSerialization),
      Layer.provide(NodeSocketServer.layer({ path: socket }))
    )
    yield* Effect.addFinalizer(() => removePidFile(pidFile))
    // The data socket first: a server that reaches the RPC socket finds it there.
    const data = yield* listenData(registry, dataSocket)
    const context = yield* Layer.build(server).pipe(
      Effect.mapError((error) => fail(`cannot listen on ${socket}: ${String(error.cause)}`))
    )
    const protocol = Context.get(context, RpcServer.Protocol)
    // The data dir is private already; the socket stays private even where it is not.
    yield* Effect.try({
      try: () => fs.chmodSync(socket, 0o600),
      catch: (cause) => fail(`cannot restrict ${socket}: ${String(cause)}`)
    })
    const home = identityOf(socket)
    if (Option.isNone(home)) return yield* fail(`${socket} is gone as soon as it was created`)
    yield* writePidFile(pidFile, startedAt)
    // Runs first on every way out: before the socket closes, so that a server that finds this
    // host gone (and a new host without the PTYs) finds the records already written.
    yield* Effect.addFinalizer(() => leaveExitRecords(options.dataDir, registry.exitRecords()))
    yield* Effect.logInfo(`PTY host (pid ${process.pid}) is listening on ${socket}`)

    const busy = Effect.map(
      protocol.clientIds,
      (clients) => clients.size > 0 || data.connections() > 0 || registry.running() > 0
    )
    const why = yield* Effect.raceAll([
      Effect.as(Deferred.await(stop), "a Shutdown request"),
      Effect.as(idleFor(idleExit, busy), `${Duration.format(idleExit)} without running programs or clients`),
      Effect.as(gone(socket, home.value), `finding ${socket} gone (no server can reach this host)`)
    ])
    yield* Effect.logInfo(`PTY host (pid ${process.pid}) is stopping after ${why}`)
  }).pipe(Effect.scoped)
