/**
 * Replay throughput of the Postgres event log from offset 1, as a ratio against reading the same
 * table through plain `pg`, measured in the same run on the same database.
 *
 * The log is filled with BENCH_EVENTS events (~200-byte JSON payloads), then read whole, each
 * reader BENCH_REPEAT times in turn: `log.read` in pages of 10,000; `log.subscribe` from offset 1
 * taking exactly that many; plain `pg` in keyset pages of 10,000, and in one query.
 *
 * Env: BENCH_EVENTS (200000), BENCH_REPEAT (3), BENCH_MAX_SECONDS (cap a read, 20), BENCH_SYSTEMS
 * (which of pg,vibes to measure; both), BENCH_CANDIDATES
 * (variants of the log from `PgEventLogCandidate.ts` to measure too, e.g. `current,proposed`; none),
 * DATABASE_URL.
 */
import { Context, Effect, Layer, Stream } from "effect"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../infra/eventlog/PgEventLog.js"
import { EventFilter, NewEvent } from "../../rpc/Events.js"
import * as Harness from "./harness.js"
import * as Candidate from "./PgEventLogCandidate.js"

const readPage = 10_000
const payload = { pad: "x".repeat(190) }
const all = EventFilter.make({})

/** One reader's result. */
interface Read {
  readonly events: number
  readonly millis: number
}

const main = Effect.gen(function* () {
  const total = Harness.envInt("BENCH_EVENTS", 200_000)
  const repeat = Harness.envInt("BENCH_REPEAT", 3)
  const maxMillis = Harness.envInt("BENCH_MAX_SECONDS", 20) * 1000

  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const context = yield* Layer.build(PgEventLog.layer().pipe(Layer.provideMerge(Harness.sqlLayer(db))))
  const log = Context.get(context, EventLog)
  const candidates = yield* Effect.forEach(Harness.envList("BENCH_CANDIDATES", []), (spec) =>
    Effect.map(Effect.provide(Candidate.make(Candidate.parse(spec)), context), (l) => [spec, l] as const)
  )
  const client = yield* Harness.rawClient(db)

  yield* Harness.progress(`filling the log with ${Harness.count(total)} events`)
  const batch = Array.from({ length: 1000 }, (_, n) =>
    NewEvent.make({
      type: "session.output",
      source: { nodeId: "bench", component: "bench" },
      sessionId: `session-${n % 10}`,
      data: payload
    })
  )
  const [, fillMillis] = yield* Harness.timed(
    Effect.forEach(
      Array.from({ length: Math.ceil(total / batch.length) }),
      (_, i) => log.append(batch.slice(0, Math.min(batch.length, total - i * batch.length))),
      { concurrency: 4, discard: true }
    )
  )
  yield* Harness.progress(`filled in ${Harness.millis(fillMillis)} ms`)
  yield* Harness.rawQuery(client, "VACUUM ANALYZE vibes_events")

  const logReaders = (name: string, l: Candidate.BenchedLog) =>
    [
      [
        `${name}: read, pages of 10,000`,
        Effect.gen(function* () {
          let events = 0
          let from = 1
          const start = Harness.now()
          while (events < total) {
            const page = yield* l.read(from, all, readPage)
            const last = page[page.length - 1]
            if (last === undefined) break
            events += page.length
            from = last.offset + 1
          }
          return { events, millis: Harness.now() - start }
        })
      ],
      [
        `${name}: subscribe from offset 1, take N`,
        Effect.gen(function* () {
          const start = Harness.now()
          const events = yield* l
            .subscribe({ _tag: "Offset", offset: 1 }, all)
            .pipe(Stream.take(total), Stream.interruptAfter(maxMillis), Stream.runCount)
          return { events, millis: Harness.now() - start }
        })
      ]
    ] as const

  const systems = Harness.envList("BENCH_SYSTEMS", ["pg", "vibes"])
  const plainReaders: ReadonlyArray<readonly [string, Effect.Effect<Read, unknown>]> = [
    [
      "plain pg, keyset pages of 10,000",
      Effect.gen(function* () {
        let events = 0
        let from = 1
        const start = Harness.now()
        while (events < total) {
          const page = yield* Harness.rawQuery<{ offset: string }>(
            client,
            `SELECT * FROM vibes_events WHERE "offset" >= $1 ORDER BY "offset" LIMIT ${readPage}`,
            [from]
          )
          const last = page.rows[page.rows.length - 1]
          if (last === undefined) break
          events += page.rows.length
          from = Number(last.offset) + 1
        }
        return { events, millis: Harness.now() - start }
      })
    ],
    [
      "plain pg, one query",
      Effect.gen(function* () {
        const start = Harness.now()
        const result = yield* Harness.rawQuery(client, `SELECT * FROM vibes_events ORDER BY "offset"`)
        return { events: result.rows.length, millis: Harness.now() - start }
      })
    ]
  ]
  const readers: ReadonlyArray<readonly [string, Effect.Effect<Read, unknown>]> = [
    ...(systems.includes("pg") ? plainReaders : []),
    ...(systems.includes("vibes") ? logReaders("vibes", log) : []),
    ...candidates.flatMap(([spec, l]) => logReaders(`candidate \`${spec}\``, l))
  ]

  const results = new Map<string, Array<Read>>()
  for (let round = 1; round <= repeat; round++) {
    for (const [name, reader] of readers) {
      const read = yield* reader
      results.set(name, [...(results.get(name) ?? []), read])
      yield* Harness.progress(
        `round ${round}, ${name}: ${Harness.count((read.events * 1000) / read.millis)} events/s ` +
          `(${Harness.count(read.events)} in ${Harness.millis(read.millis)} ms)`
      )
    }
  }

  const rate = (read: Read) => (read.events * 1000) / read.millis
  const medianRate = (name: string) => Harness.median((results.get(name) ?? []).map(rate))
  const baseline = medianRate("plain pg, keyset pages of 10,000")

  yield* Harness.print(
    `\n### Replay throughput (${db.kind === "external" ? "DATABASE_URL" : "embedded Postgres"})\n`
  )
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(
    `- ${Harness.count(total)} events of ~200-byte JSON payloads, read from offset 1; ` +
      `median of ${repeat} rounds (each round: every reader once, in table order)\n`
  )
  yield* Harness.print(
    Harness.header([
      "reader",
      "events read",
      "median events/s",
      "all rounds events/s",
      "vs plain pg pages",
      "≥ 200k/s"
    ])
  )
  for (const [name] of readers) {
    const reads = results.get(name) ?? []
    const median = medianRate(name)
    yield* Harness.print(
      Harness.row([
        name,
        Harness.count(Harness.median(reads.map((r) => r.events))),
        Harness.count(median),
        reads.map((r) => Harness.count(rate(r))).join(", "),
        Harness.ratio(median, baseline),
        median >= 200_000 ? "yes" : "no"
      ])
    )
  }
})

Harness.run(main)
