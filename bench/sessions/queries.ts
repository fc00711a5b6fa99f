/**
 * How soon a program's terminal query is answered when no client is attached.
 *
 * Each sample is one program that, in the PTY's raw mode, writes a device-attributes query
 * (`CSI c`) at start-up and times, with its own clock, how long the answer takes to arrive on its
 * input; it prints that time and exits. `BENCH_QUERY_COUNT` (50) programs are run one after
 * another:
 *
 * - **raw**: node-pty in this process with @xterm/headless, which answers what it is fed (the
 *   answer written back to the PTY by the `onData` hook): what any terminal emulator does, and the
 *   floor for a server that keeps a screen model;
 * - **vibes**: a session of a `vibes serve` child process (compiled build, fresh database), with
 *   no client attached; the server's screen model answers. The time is read from the session's
 *   screen once the program has ended.
 *
 * Env: BENCH_QUERY_COUNT, DATABASE_URL.
 */
import { Effect } from "effect"
import Headless from "@xterm/headless"
import { CreateSession } from "../../rpc/Sessions.js"
import * as Harness from "../events/harness.js"
import * as Sessions from "./harness.js"

const count = Harness.envInt("BENCH_QUERY_COUNT", 50)
const size = { cols: 80, rows: 24 }

/** The program: asks, waits for the whole answer, prints how long it took. */
const script = `
process.stdin.setRawMode(true)
let got = ""
let asked = 0
process.stdin.on("data", (data) => {
  got += data.toString("latin1")
  if (!got.endsWith("c")) return
  const ms = performance.now() - asked
  process.stdout.write("\\r\\nANSWER AFTER " + ms.toFixed(3) + " ms\\r\\n")
  process.exit(0)
})
asked = performance.now()
process.stdout.write("\\x1b[c")
`

const answerPattern = /ANSWER AFTER ([\d.]+) ms/

const parse = (text: string): Effect.Effect<number, Harness.BenchError> => {
  const match = answerPattern.exec(text)
  return match === null
    ? Effect.fail(
        new Harness.BenchError({ message: `no answer in the output: ${JSON.stringify(text.slice(-300))}` })
      )
    : Effect.succeed(Number(match[1]))
}

const raw = Effect.gen(function* () {
  const samples: Array<number> = []
  for (let i = 0; i < count; i++) {
    const text = yield* Effect.scoped(
      Effect.gen(function* () {
        const pty = yield* Sessions.rawPty(process.execPath, ["-e", script], size)
        const terminal = new Headless.Terminal({ ...size, allowProposedApi: true })
        yield* Effect.addFinalizer(() => Effect.sync(() => terminal.dispose()))
        terminal.onData((reply) => pty.write(reply))
        let output = ""
        return yield* Effect.async<string>((resume) => {
          Sessions.onBytes(pty, (data) => {
            output += data.toString("latin1")
            terminal.write(data)
          })
          pty.onExit(() => resume(Effect.succeed(output)))
        })
      })
    )
    samples.push(yield* parse(text))
  }
  return samples
})

const vibes = (server: Sessions.Server) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Sessions.connect(server)
      const samples: Array<number> = []
      for (let i = 0; i < count; i++) {
        const session = yield* Sessions.orBench(
          client.Sessions.Create(
            CreateSession.make({ command: process.execPath, args: ["-e", script], ...size })
          )
        )
        yield* Sessions.waitForInfo(
          client,
          session.id,
          (info) => info.state !== "running",
          "the program to end",
          60
        )
        const screen = yield* Sessions.orBench(client.Sessions.Snapshot({ sessionId: session.id }))
        samples.push(yield* parse(screen.text))
      }
      return samples
    })
  )

const main = Effect.gen(function* () {
  const loadAtStart = Sessions.runLines()
  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const server = yield* Sessions.serve(db)
  yield* Harness.progress(`vibes serve (pid ${server.pid}) listens on ${server.url}`)
  const rawSamples = yield* raw
  yield* Harness.progress(`raw: p50 ${Harness.millis(Harness.percentile(rawSamples, 50))} ms`)
  yield* Sessions.settle([server.pid, server.ptyHostPid()], 60)
  const vibesSamples = yield* vibes(server)
  yield* Harness.progress(`vibes: p50 ${Harness.millis(Harness.percentile(vibesSamples, 50))} ms`)

  yield* Harness.print(`### Terminal query answered with no client attached (${count} programs each)\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(loadAtStart)
  yield* Harness.print("")
  yield* Harness.print(
    Harness.header([
      "system",
      "programs",
      "p50 ms",
      "p90 ms",
      "p99 ms",
      "max ms",
      "p99 vs raw",
      "p99 ≤ 50 ms"
    ])
  )
  const rawP99 = Harness.percentile(rawSamples, 99)
  const line = (name: string, samples: ReadonlyArray<number>) =>
    Harness.row([
      name,
      Harness.count(samples.length),
      Harness.millis(Harness.percentile(samples, 50)),
      Harness.millis(Harness.percentile(samples, 90)),
      Harness.millis(Harness.percentile(samples, 99)),
      Harness.millis(Math.max(...samples)),
      Harness.ratio(Harness.percentile(samples, 99), rawP99),
      Harness.percentile(samples, 99) <= 50 ? "yes" : "no"
    ])
  yield* Harness.print(line("node-pty + @xterm/headless, in process", rawSamples))
  yield* Harness.print(line("vibes session, no client attached", vibesSamples))
  yield* Harness.print("")
})

Harness.run(main)
