/**
 * Many attached sessions printing at once: `BENCH_SOAK_SESSIONS` (1000) sessions of a
 * `vibes serve` child process (compiled build, fresh database), each running a bash loop that
 * prints a numbered 1000-byte line every 100 ms (about 10 kB/s, bash builtins only, so no process
 * is spawned per line), each attached over the attach socket by this process with the typed attach
 * client. After all are attached, for `BENCH_SOAK_SECONDS` (60) this process checks every byte it
 * receives, and a further session (`stty raw -echo; exec cat`) is typed into one key every 10 ms
 * (`BENCH_SOAK_KEYS`, 1000), timing each echo.
 *
 * No byte lost means, per session:
 * - on the wire, every `Output` starts where the previous ended (no `Reset`) and the lines'
 *   numbers follow one another;
 * - in the log, after the sessions are closed, the recorded `session.output` events start at
 *   sequence number 0, follow one another without a gap, and reach at least the last byte the
 *   client received.
 *
 * Reported: received MB/s, the checks above, echo p50/p99/max, the CPU of the server, its PTY
 * host, Postgres and this process over the window, and the memory of the server and PTY host.
 * Env: those, BENCH_SOAK_CREATE_CONCURRENCY (8), BENCH_SOAK_SCROLLBACK (1000), BENCH_SOAK_ATTACH,
 * BENCH_SOAK_PERIOD (seconds between a session's lines, 0.1), BENCH_CPU_PROF (a directory for
 * the server's CPU profile), DATABASE_URL.
 */
import { Deferred, Effect, Stream } from "effect"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const sessionCount = Harness.envInt("BENCH_SOAK_SESSIONS", 1000)
const seconds = Harness.envInt("BENCH_SOAK_SECONDS", 60)
const keys = Harness.envInt("BENCH_SOAK_KEYS", 1000)
const createConcurrency = Harness.envInt("BENCH_SOAK_CREATE_CONCURRENCY", 8)
const cpuProfDir = process.env["BENCH_CPU_PROF"]
/**
 * Scrollback lines of each session's screen model (`VIBES_SESSION_SCROLLBACK` of the server):
 * 1000 here rather than the default 10,000, so 1000 sessions' models fit in memory (a full
 * scrollback of 120 columns is about 1.4 KiB a line).
 */
const scrollback = Harness.envInt("BENCH_SOAK_SCROLLBACK", 1000)
/** `BENCH_SOAK_ATTACH=0`: the sessions print with no client attached (to tell the clients' cost apart). */
const attachAll = process.env["BENCH_SOAK_ATTACH"] !== "0"
const size = { cols: 120, rows: 24 }
const lineBytes = 1000

// Lines of `%08d ` and padding up to 1000 bytes with the newline, every 100 ms (`read -t` on the
// terminal, which never gets input, is the delay).
const printer = [
  "-c",
  `pad=$(printf '%0${lineBytes - 10}d' 0); i=0; ` +
    `while :; do printf '%08d %s\\n' "$i" "$pad"; i=$((i+1)); read -t ${process.env["BENCH_SOAK_PERIOD"] ?? "0.1"} _; done`
]

/** What this process saw of one session. */
interface Seen {
  readonly sessionId: string
  /** Sequence number of the next byte expected. */
  next: number
  received: number
  /** The line after the last complete one, and the number of the last complete line. */
  partial: string
  lastLine: number
  seqBreaks: number
  lineBreaks: number
  resets: number
  reconnects: number
}

const seen = (sessionId: string): Seen => ({
  sessionId,
  next: -1,
  received: 0,
  partial: "",
  lastLine: -1,
  seqBreaks: 0,
  lineBreaks: 0,
  resets: 0,
  reconnects: 0
})

/** Checks a chunk of output against what came before it. */
const check = (state: Seen, seq: number, data: Uint8Array) => {
  if (state.next >= 0 && seq !== state.next) state.seqBreaks++
  state.next = seq + data.length
  state.received += data.length
  const text = state.partial + Buffer.from(data).toString("latin1")
  const lines = text.split("\n")
  state.partial = lines.pop() ?? ""
  for (const line of lines) {
    const match = /^(\d{8}) /.exec(line)
    if (match === null) continue
    const n = Number(match[1])
    if (state.lastLine >= 0 && n !== state.lastLine + 1) state.lineBreaks++
    state.lastLine = n
  }
}

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  // One client holds every attachment: the per-client stream limit (128 by default) is raised.
  const server = yield* Sessions.serve(db, {
    cpuProfDir,
    env: {
      VIBES_SESSION_SCROLLBACK: String(scrollback),
      VIBES_MAX_STREAMS_PER_CLIENT: String(sessionCount * 2 + 16)
    }
  })
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const client = yield* Sessions.connect(server)

  // Create and attach ------------------------------------------------------------------------
  const states: Array<Seen> = []
  const startCreate = Harness.now()
  yield* Effect.forEach(
    Array.from({ length: sessionCount }, (_, i) => i),
    (i) =>
      Effect.gen(function* () {
        const session = yield* Sessions.orBench(
          client.Sessions.Create(CreateSession.make({ command: "/bin/bash", args: printer, ...size }))
        )
        const state = seen(session.id)
        states.push(state)
        if (!attachAll) return
        const attachment = yield* Sessions.attachSocket(server, session.id, size)
        const attached = yield* Deferred.make<void>()
        yield* attachment.events.pipe(
          Stream.runForEach((event) =>
            Effect.sync(() => {
              switch (event._tag) {
                case "Attached":
                  // A resumed attachment continues at its `from`; a new one starts at the screen's seq.
                  if (state.next < 0) state.next = event.seq
                  Deferred.unsafeDone(attached, Effect.void)
                  break
                case "Output":
                  check(state, event.seq, event.data)
                  break
                case "Reset":
                  state.resets++
                  state.next = event.screen.seq
                  state.partial = ""
                  state.lastLine = -1
                  break
                case "Reconnecting":
                  state.reconnects++
                  break
              }
            })
          ),
          Effect.catchAll((error) =>
            Harness.progress(`session ${session.id}: attach failed: ${error.message}`)
          ),
          Effect.forkScoped
        )
        yield* Deferred.await(attached)
        if ((i + 1) % 100 === 0) yield* Harness.progress(`${i + 1} sessions created and attached`)
      }),
    { concurrency: createConcurrency, discard: true }
  )
  const createSeconds = (Harness.now() - startCreate) / 1000

  // The window: bytes received, and echo in a further session ---------------------------------
  const echoSession = yield* Sessions.orBench(
    client.Sessions.Create(
      CreateSession.make({ command: "/bin/sh", args: ["-c", "stty raw -echo; printf R; exec cat"], ...size })
    )
  )
  const echo = yield* Sessions.attachSocket(server, echoSession.id, size)
  let echoed = 0
  let ready = false
  const readyDone = yield* Deferred.make<void>()
  let waiter: { readonly count: number; readonly done: Deferred.Deferred<number> } | undefined
  yield* echo.events.pipe(
    Stream.runForEach((event) =>
      Effect.sync(() => {
        let data: Uint8Array | undefined
        if (event._tag === "Attached" && event.screen?.text.includes("R") === true) ready = true
        if (event._tag === "Output") data = event.data
        if (data !== undefined && !ready) {
          const r = data.indexOf(82)
          if (r >= 0) {
            ready = true
            data = data.subarray(r + 1)
          } else data = undefined
        }
        if (ready) Deferred.unsafeDone(readyDone, Effect.void)
        if (data !== undefined) echoed += data.length
        if (waiter !== undefined && echoed >= waiter.count) {
          Deferred.unsafeDone(waiter.done, Effect.succeed(Harness.now()))
          waiter = undefined
        }
      })
    ),
    Effect.forkScoped
  )
  yield* Deferred.await(readyDone).pipe(
    Effect.timeoutFail({
      duration: "30 seconds",
      onTimeout: () => new Harness.BenchError({ message: "the echo session did not start within 30 s" })
    })
  )

  const receivedBefore = states.reduce((sum, s) => sum + s.received, 0)
  const cpuBefore = Sessions.cpuSample(server)
  const windowStart = Harness.now()
  const latencies: Array<number> = []
  const deadline = windowStart + seconds * 1000
  for (let i = 0; i < keys || Harness.now() < deadline; i++) {
    if (i < keys) {
      const start = Harness.now()
      const done = yield* Deferred.make<number>()
      waiter = { count: i + 1, done }
      yield* echo.input(new Uint8Array([97 + (i % 26)]))
      const end = yield* Deferred.await(done).pipe(
        Effect.timeoutFail({
          duration: "30 seconds",
          onTimeout: () => new Harness.BenchError({ message: `keystroke ${i}: no echo within 30 s` })
        })
      )
      latencies.push(end - start)
    }
    yield* Effect.sleep("10 millis")
    if ((i + 1) % 1000 === 0) {
      const mb = (states.reduce((sum, s) => sum + s.received, 0) - receivedBefore) / 1e6
      yield* Harness.progress(
        `${((Harness.now() - windowStart) / 1000).toFixed(0)} s: ${mb.toFixed(1)} MB received, ` +
          `echo p99 so far ${Harness.millis(Harness.percentile(latencies, 99))} ms`
      )
    }
  }
  const windowSeconds = (Harness.now() - windowStart) / 1000
  const cpu = Sessions.cpuSpent(cpuBefore, Sessions.cpuSample(server))
  const receivedMB = (states.reduce((sum, s) => sum + s.received, 0) - receivedBefore) / 1e6
  const memory = {
    serverRss: Sessions.rssKiB(server.pid),
    serverPss: Sessions.pssKiB(server.pid),
    hostRss: Sessions.rssKiB(server.ptyHostPid()),
    hostPss: Sessions.pssKiB(server.ptyHostPid())
  }

  // Close everything (which flushes each recorder), then read the recorded history ------------
  yield* Effect.forEach(
    states,
    (state) => Sessions.orBench(client.Sessions.Close({ sessionId: state.sessionId })),
    {
      concurrency: 16,
      discard: true
    }
  )
  const raw = yield* Harness.rawClient(db)
  const recorded = yield* Harness.rawQuery<{
    session_id: string
    first: string
    end: string
    gaps: string
  }>(
    raw,
    `SELECT session_id, min(seq) AS first, max(seq + len) AS "end",
            count(*) FILTER (WHERE prev_end IS NOT NULL AND seq <> prev_end) AS gaps
       FROM (SELECT session_id, (data->>'seq')::bigint AS seq, octet_length(bytes) AS len,
                    lag((data->>'seq')::bigint + octet_length(bytes)) OVER (PARTITION BY session_id ORDER BY "offset") AS prev_end
               FROM vibes_events WHERE type = 'session.output' AND session_id = ANY($1)) t
      GROUP BY session_id`,
    [states.map((s) => s.sessionId)]
  )
  const bySession = new Map(recorded.rows.map((row) => [row.session_id, row]))
  let recordGaps = 0
  let recordShort = 0
  let unrecorded = 0
  for (const state of states) {
    const row = bySession.get(state.sessionId)
    if (row === undefined) {
      unrecorded++
      continue
    }
    if (Number(row.first) !== 0) recordGaps++
    recordGaps += Number(row.gaps)
    if (Number(row.end) < state.next) recordShort++
  }
  const sum = (field: "seqBreaks" | "lineBreaks" | "resets" | "reconnects") =>
    states.reduce((total, s) => total + s[field], 0)

  yield* Harness.print(
    `### ${sessionCount} attached sessions printing ~10 kB/s each, echo in a further session\n`
  )
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print(
    `- creating and attaching the ${sessionCount} sessions took ${createSeconds.toFixed(0)} s; the window ${windowSeconds.toFixed(0)} s; scrollback ${scrollback} lines; clients attached: ${attachAll ? "yes" : "no"}`
  )
  yield* Harness.print("")
  yield* Harness.print(Harness.header(["measure", "value"]))
  const line = (name: string, value: string) => Harness.print(Harness.row([name, value]))
  yield* line("received by the clients, MB/s", (receivedMB / windowSeconds).toFixed(2))
  yield* line(
    "expected (10 lines of 1000 bytes + CR per second per session), MB/s",
    ((sessionCount * 10 * (lineBytes + 1)) / 1e6).toFixed(2)
  )
  yield* line("output not following the previous (sequence breaks)", String(sum("seqBreaks")))
  yield* line("line numbers not following the previous", String(sum("lineBreaks")))
  yield* line("resets / reconnects", `${sum("resets")} / ${sum("reconnects")}`)
  yield* line(
    "recorded history: gaps / shorter than received / not recorded",
    `${recordGaps} / ${recordShort} / ${unrecorded}`
  )
  yield* line(
    `echo p50 / p99 / max, ${latencies.length} keys 10 ms apart (p99 ≤ 10 ms)`,
    `${Harness.millis(Harness.percentile(latencies, 50))} / ${Harness.millis(Harness.percentile(latencies, 99))} / ${Harness.millis(Math.max(...latencies))} ms`
  )
  yield* line("CPU s over the window: server / PTY host / Postgres / this client", Sessions.cpuText(cpu))
  yield* line(
    "server RSS / PSS, PTY host RSS / PSS, MiB",
    `${(memory.serverRss / 1024).toFixed(0)} / ${(memory.serverPss / 1024).toFixed(0)}, ${(memory.hostRss / 1024).toFixed(0)} / ${(memory.hostPss / 1024).toFixed(0)}`
  )
  yield* Harness.print("")
})

Harness.run(main)
