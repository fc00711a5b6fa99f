/**
 * Append throughput of the Postgres event log, as a ratio against plain INSERTs of the same rows
 * into a table of the same schema, measured in the same run on the same database.
 *
 * Each case is a number of producers, each awaiting one append at a time of a batch of events
 * with ~200-byte JSON payloads. The baselines give each producer its own `pg` connection and
 * insert the same rows (serialised by the log's own `toRow`) with offsets from a counter in
 * memory: a multi-row `INSERT … VALUES` and an `INSERT … SELECT FROM unnest(…)`.
 *
 * Env: BENCH_EVENTS (events a case, 200000), BENCH_PRODUCERS (1,16), BENCH_BATCHES (1,100),
 * BENCH_MAX_SECONDS (cap a measurement, 15), BENCH_WARMUP_SECONDS (2), BENCH_ROUNDS (measurements
 * of each system a case, interleaved, median reported; 1), BENCH_SYSTEMS (which of
 * values,unnest,vibes to measure; all), BENCH_CANDIDATES (variants of the log from
 * `PgEventLogCandidate.ts` to measure too, e.g. `current,proposed,proposed+writers=2`; none),
 * DATABASE_URL.
 */
import type pg from "pg"
import { Context, Effect, Either, Layer } from "effect"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../infra/eventlog/PgEventLog.js"
import { NewEvent } from "../../rpc/Events.js"
import * as Harness from "./harness.js"
import * as Candidate from "./PgEventLogCandidate.js"

/** Bytes of each event's JSON `data`. */
const dataBytes = 200

// `{"pad":"…"}` is 10 bytes around the padding.
const payload = { pad: "x".repeat(dataBytes - 10) }

/** The batch one producer appends again and again (ids and offsets are fresh on every append). */
const batchOf = (producer: number, size: number): ReadonlyArray<NewEvent> =>
  Array.from({ length: size }, () =>
    NewEvent.make({
      type: "job.log",
      source: { nodeId: "bench", component: "bench" },
      jobId: `job-${producer}`,
      data: payload
    })
  )

/** What a measurement achieved. */
interface Measured {
  readonly events: number
  readonly millis: number
  /** Milliseconds each append took, as its producer saw it. */
  readonly latencies: ReadonlyArray<number>
}

/** Events a second of a measurement. */
const perSecond = (m: Measured): number => (m.events * 1000) / m.millis

/**
 * Runs `producers` concurrent loops, each awaiting `appendOnce` (one batch of `batch` events)
 * until `total` events are written between them or `maxMillis` has passed.
 */
const drive = <E, R>(
  producers: number,
  batch: number,
  total: number,
  maxMillis: number,
  appendOnce: (producer: number) => Effect.Effect<unknown, E, R>
): Effect.Effect<Measured, E, R> =>
  Effect.suspend(() => {
    let remaining = Math.ceil(total / batch)
    let appends = 0
    const latencies: Array<number> = []
    const start = Harness.now()
    const deadline = start + maxMillis
    const producer = (p: number) =>
      Effect.gen(function* () {
        while (remaining > 0 && Harness.now() < deadline) {
          remaining--
          const t0 = Harness.now()
          yield* appendOnce(p)
          latencies.push(Harness.now() - t0)
          appends++
        }
      })
    return Effect.forEach(
      Array.from({ length: producers }, (_, p) => p),
      producer,
      { concurrency: "unbounded", discard: true }
    ).pipe(Effect.map(() => ({ events: appends * batch, millis: Harness.now() - start, latencies })))
  })

const columns = `"offset", id, type, ts, source_node, source_component, session_id, job_id, tenant_id, severity,
  correlation_id, data`

const valuesStatement = (rows: number): string => {
  const tuples = Array.from({ length: rows }, (_, r) => {
    const base = r * 12
    return `(${Array.from({ length: 12 }, (_, c) => `$${base + c + 1}`).join(", ")})`
  })
  return `INSERT INTO bench_raw (${columns}) VALUES ${tuples.join(", ")}`
}

const unnestStatement = `
  INSERT INTO bench_raw (${columns})
  SELECT o, i, ty, t, sn, sc, se, jo, te, sv, co, d::jsonb
  FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
    AS t(o, i, ty, t, sn, sc, se, jo, te, sv, co, d)`

/** The rows the log would write for `events`, serialised the same way. */
const rowsOf = (events: ReadonlyArray<NewEvent>) => {
  const now = Date.now()
  return events.map((event) => Either.getOrThrow(PgEventLog.toRow(event, now)))
}

/** The plain-`pg` baselines: same rows, offsets from memory, one connection a producer. */
const baselines = (clients: ReadonlyArray<pg.Client>) => {
  let offset = 0
  const client = (p: number) => clients[p] ?? clients[0]
  return {
    values: (events: ReadonlyArray<NewEvent>, statement: string) => (p: number) =>
      Effect.suspend(() => {
        const values: Array<unknown> = []
        for (const r of rowsOf(events)) {
          values.push(++offset, r.id, r.type, r.ts, r.sourceNode, r.sourceComponent, r.sessionId, r.jobId)
          values.push(r.tenantId, r.severity, r.correlationId, r.data)
        }
        const c = client(p)
        return c === undefined ? Effect.void : Harness.rawQuery(c, statement, values)
      }),
    unnest: (events: ReadonlyArray<NewEvent>) => (p: number) =>
      Effect.suspend(() => {
        const rows = rowsOf(events)
        const c = client(p)
        return c === undefined
          ? Effect.void
          : Harness.rawQuery(c, unnestStatement, [
              rows.map(() => ++offset),
              rows.map((r) => r.id),
              rows.map((r) => r.type),
              rows.map((r) => r.ts),
              rows.map((r) => r.sourceNode),
              rows.map((r) => r.sourceComponent),
              rows.map((r) => r.sessionId),
              rows.map((r) => r.jobId),
              rows.map((r) => r.tenantId),
              rows.map((r) => r.severity),
              rows.map((r) => r.correlationId),
              rows.map((r) => r.data)
            ])
      })
  }
}

const main = Effect.gen(function* () {
  const total = Harness.envInt("BENCH_EVENTS", 200_000)
  const producerCounts = Harness.envInts("BENCH_PRODUCERS", [1, 16])
  const batchSizes = Harness.envInts("BENCH_BATCHES", [1, 100])
  const maxMillis = Harness.envInt("BENCH_MAX_SECONDS", 15) * 1000
  const warmupMillis = Harness.envInt("BENCH_WARMUP_SECONDS", 2) * 1000
  const rounds = Harness.envInt("BENCH_ROUNDS", 1)
  const systems = Harness.envList("BENCH_SYSTEMS", ["values", "unnest", "vibes"])
  const candidateSpecs = Harness.envList("BENCH_CANDIDATES", [])

  const db = yield* Harness.database
  const machine = yield* Harness.machine(db)
  const context = yield* Layer.build(PgEventLog.layer().pipe(Layer.provideMerge(Harness.sqlLayer(db))))
  const log = Context.get(context, EventLog)
  const candidates = yield* Effect.forEach(candidateSpecs, (spec) =>
    Effect.map(Effect.provide(Candidate.make(Candidate.parse(spec)), context), (l) => [spec, l] as const)
  )

  const admin = yield* Harness.rawClient(db)
  yield* Harness.rawQuery(admin, "CREATE TABLE bench_raw (LIKE vibes_events INCLUDING ALL)")
  const clients = yield* Effect.forEach(
    Array.from({ length: Math.max(...producerCounts) }, (_, p) => p),
    () => Harness.rawClient(db)
  )
  const raw = baselines(clients)
  // Every measurement starts from empty tables and a checkpoint, so none pays for another's WAL.
  const reset = Effect.zipRight(
    Harness.rawQuery(admin, "TRUNCATE vibes_events, bench_raw"),
    Harness.rawQuery(admin, "CHECKPOINT")
  )

  const measure = (
    name: string,
    producers: number,
    batch: number,
    appendOnce: (p: number) => Effect.Effect<unknown, unknown>
  ) =>
    Effect.gen(function* () {
      yield* reset
      yield* drive(producers, batch, Math.ceil(total / 20), warmupMillis, appendOnce)
      const measured = yield* drive(producers, batch, total, maxMillis, appendOnce)
      yield* Harness.progress(
        `${name}, ${producers} producers × ${batch}: ${Harness.count(perSecond(measured))} events/s ` +
          `(${Harness.count(measured.events)} events in ${Harness.millis(measured.millis)} ms)`
      )
      return measured
    })

  const results: Array<string> = []
  const candidateResults: Array<string> = []
  for (const batch of batchSizes) {
    for (const producers of producerCounts) {
      const batches = Array.from({ length: producers }, (_, p) => batchOf(p, batch))
      const batchFor = (p: number) => batches[p] ?? batchOf(p, batch)
      const statement = valuesStatement(batch)
      const contenders: ReadonlyArray<readonly [string, (p: number) => Effect.Effect<unknown, unknown>]> = [
        ...(systems.includes("values")
          ? [["values", (p: number) => raw.values(batchFor(p), statement)(p)] as const]
          : []),
        ...(systems.includes("unnest")
          ? [["unnest", (p: number) => raw.unnest(batchFor(p))(p)] as const]
          : []),
        ...(systems.includes("vibes") ? [["vibes", (p: number) => log.append(batchFor(p))] as const] : []),
        ...candidates.map(
          ([spec, candidate]) => [`candidate ${spec}`, (p: number) => candidate.append(batchFor(p))] as const
        )
      ]
      const measured = new Map<string, Array<Measured>>()
      for (let round = 0; round < rounds; round++) {
        for (const [name, appendOnce] of contenders) {
          const m = yield* measure(name, producers, batch, appendOnce)
          measured.set(name, [...(measured.get(name) ?? []), m])
        }
      }
      // The round of median throughput stands for the system.
      const pick = (name: string): Measured => {
        const all = [...(measured.get(name) ?? [])].sort((a, b) => perSecond(a) - perSecond(b))
        return all[Math.floor((all.length - 1) / 2)] ?? { events: 0, millis: Number.NaN, latencies: [] }
      }
      const latency = (m: Measured) =>
        `${Harness.millis(Harness.percentile(m.latencies, 50))} / ${Harness.millis(Harness.percentile(m.latencies, 99))}`
      const values = perSecond(pick("values"))
      const unnest = perSecond(pick("unnest"))
      const vibes = pick("vibes")
      const v = perSecond(vibes)
      results.push(
        Harness.row([
          producers,
          batch,
          Harness.count(v),
          Harness.count(values),
          Harness.ratio(v, values),
          Harness.count(unnest),
          Harness.ratio(v, unnest),
          latency(vibes),
          latency(pick("values")),
          Harness.count(vibes.events),
          v >= 50_000 && v >= 0.7 * values ? "yes" : "no"
        ])
      )
      for (const [spec] of candidates) {
        const m = pick(`candidate ${spec}`)
        const c = perSecond(m)
        candidateResults.push(
          Harness.row([
            producers,
            batch,
            `\`${spec}\``,
            Harness.count(c),
            Harness.ratio(c, v),
            Harness.ratio(c, values),
            Harness.ratio(c, unnest),
            latency(m)
          ])
        )
      }
    }
  }

  const where = db.kind === "external" ? "DATABASE_URL" : "embedded Postgres"
  yield* Harness.print(`\n### Append throughput (${where})\n`)
  yield* Harness.print(Harness.machineMarkdown(machine))
  yield* Harness.print(
    `- ${dataBytes}-byte JSON payloads; up to ${Harness.count(total)} events a measurement ` +
      `(capped at ${maxMillis / 1000} s) after a warm-up; ${rounds === 1 ? "one round" : `median of ${rounds} interleaved rounds`}\n`
  )
  yield* Harness.print(
    Harness.header([
      "producers",
      "events/append",
      "vibes events/s",
      "raw VALUES events/s",
      "vibes / VALUES",
      "raw unnest events/s",
      "vibes / unnest",
      "vibes append p50 / p99 ms",
      "VALUES p50 / p99 ms",
      "vibes events measured",
      "≥ 50k/s and ≥ 0.7x"
    ])
  )
  for (const line of results) yield* Harness.print(line)
  if (candidateResults.length > 0) {
    yield* Harness.print(
      "\nVariants of the log (`bench/events/PgEventLogCandidate.ts`), measured in the same run:\n"
    )
    yield* Harness.print(
      Harness.header([
        "producers",
        "events/append",
        "variant",
        "events/s",
        "vs vibes",
        "vs raw VALUES",
        "vs raw unnest",
        "append p50 / p99 ms"
      ])
    )
    for (const line of candidateResults) yield* Harness.print(line)
  }
})

Harness.run(main)
