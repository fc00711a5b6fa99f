/**
 * The Postgres event log when its database fails under it: every connection killed mid-stream, and
 * the embedded Postgres killed (SIGKILL) and restarted by its supervisor, while producers append and
 * subscribers follow. Nothing acknowledged may be lost or stored twice, offsets stay gapless,
 * subscribers resume without gap or duplicate, and the log recovers on its own.
 *
 * To make "mid-stream" certain rather than likely, an admin connection holds an exclusive lock on
 * `vibes_events` until a write transaction and a subscriber's read are both waiting on it; the
 * failure then hits both in flight.
 */
import pg from "pg"
import { describe, expect, it } from "@effect/vitest"
import {
  Cause,
  Context,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  Layer,
  Option,
  Redacted,
  Ref,
  Schedule,
  Schema,
  Stream,
  SubscriptionRef
} from "effect"
import * as PgSupervisor from "../../../actors/supervisors/PgSupervisor.js"
import * as Db from "../../../infra/db/Db.js"
import * as Migrations from "../../../infra/db/Migrations.js"
import { EventLog } from "../../../infra/eventlog/EventLog.js"
import * as PgEventLog from "../../../infra/eventlog/PgEventLog.js"
import { EventFilter, NewEvent, type StoredEvent } from "../../../rpc/Events.js"
import { tempDir } from "../../support/TempDir.js"
import * as TestDatabase from "../../support/TestDatabase.js"

type Log = EventLog["Type"]

const source = { nodeId: "test", component: "failures" }
const all = EventFilter.make({})
const Payload = Schema.Struct({ producer: Schema.Int, n: Schema.Int })

const event = (producer: number, n: number) =>
  NewEvent.make({ type: "job.log", source, jobId: `p${producer}`, data: { producer, n } })

const keyOf = (data: unknown): string => {
  const { producer, n } = Schema.decodeUnknownSync(Payload)(data)
  return `${producer}:${n}`
}

const range = (count: number) => Array.from({ length: count }, (_, i) => i)

/** A node: its own pool, named so its backends can be told apart, and its own event log. */
const startNode = (url: Redacted.Redacted<string>, applicationName: string) =>
  Layer.build(
    PgEventLog.layer().pipe(
      Layer.provideMerge(Layer.effectDiscard(Migrations.run)),
      Layer.provide(
        Db.layer({
          url,
          poolSize: 4,
          connectTimeout: "10 seconds",
          queryTimeout: "30 seconds",
          applicationName
        })
      )
    )
  ).pipe(Effect.map((context) => Context.get(context, EventLog)))

/** A plain connection beside the nodes' pools, to watch their backends and kill them. */
const connectAdmin = (url: Redacted.Redacted<string>, applicationName = "vibes-test-admin") =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const client = new pg.Client({
        connectionString: Redacted.value(url),
        application_name: applicationName
      })
      // A server that dies under this client fails its next query; the event only needs a listener.
      client.on("error", () => undefined)
      await client.connect()
      return client
    }),
    (client) => Effect.sync(() => void client.end().catch(() => undefined))
  )

const query = <R extends pg.QueryResultRow>(client: pg.Client, text: string) =>
  Effect.promise(() => client.query<R>(text)).pipe(Effect.map((result) => result.rows))

/** A server process of the test database, as `pg_stat_activity` shows it. */
interface Backend {
  readonly pid: number
  readonly application_name: string
  readonly query: string
}

const locker = "vibes-test-lock"
const others = `FROM pg_stat_activity
  WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> '${locker}'`
const backends = (admin: pg.Client) => query<Backend>(admin, `SELECT pid, application_name, query ${others}`)

/** Terminates every other backend of the database, waiting (up to 5 s each) until they are gone. */
const killEveryBackend = (admin: pg.Client) =>
  query<Backend>(admin, `SELECT pid, application_name, query, pg_terminate_backend(pid, 5000) ${others}`)

const isListen = (backend: Backend) => /^LISTEN /.test(backend.query)

/**
 * Holds an exclusive lock on the events table until `release` (or the connection's death), on a
 * connection of its own: inside a transaction `pg_stat_activity` is a snapshot, so watching
 * happens elsewhere.
 */
const lockEvents = (url: Redacted.Redacted<string>) =>
  Effect.gen(function* () {
    const client = yield* connectAdmin(url, locker)
    yield* query(client, "BEGIN")
    yield* query(client, "LOCK TABLE vibes_events IN ACCESS EXCLUSIVE MODE")
    return { release: query(client, "COMMIT") }
  })

/**
 * Waits until `node` has both a write (an INSERT wants `RowExclusiveLock`) and a read (a SELECT
 * wants `AccessShareLock`) waiting on the events table. The lock tells them apart where
 * `pg_stat_activity.query` cannot: it still shows the previous statement while a new one is parsed.
 */
const writeAndReadBlocked = (admin: pg.Client, node: string) =>
  eventually(
    Effect.map(
      query<{ mode: string }>(
        admin,
        `SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE NOT l.granted AND l.relation = 'vibes_events'::regclass
           AND a.datname = current_database() AND a.application_name = '${node}'`
      ),
      (waiting) =>
        waiting.some((w) => w.mode === "RowExclusiveLock") &&
        waiting.some((w) => w.mode === "AccessShareLock")
    ),
    `a write and a read of ${node} to wait on the lock`
  ).pipe(
    Effect.catchAll((error) =>
      Effect.flatMap(
        query<{ pid: number; state: string | null; waiting: string | null; query: string }>(
          admin,
          `SELECT pid, state, wait_event_type || ':' || wait_event AS waiting, left(query, 60) AS query
           ${others} AND application_name = '${node}'`
        ),
        (rows) => Effect.fail(new Error(`${error.message}; ${node} was doing ${JSON.stringify(rows)}`))
      )
    )
  )

/** Re-checks `condition` every 50 ms until it holds; fails after `within`. */
const eventually = <E, R>(
  condition: Effect.Effect<boolean, E, R>,
  what: string,
  within: Duration.DurationInput = "10 seconds"
) =>
  condition.pipe(
    Effect.repeat({ until: (ok) => ok, schedule: Schedule.spaced("50 millis") }),
    Effect.timeoutFail({
      duration: within,
      onTimeout: () => new Error(`timed out after ${Duration.format(within)} waiting for ${what}`)
    }),
    Effect.asVoid
  )

/** One append, as its producer saw it. */
interface Attempt {
  readonly key: string
  /** Whether it started before the failure hit and returned after: it was in flight. */
  readonly inFlight: boolean
  /** Whether it started once the failure was over (backends killed, or the server back). */
  readonly afterRecovery: boolean
  /** The offsets it was given, or why it failed. */
  readonly outcome: Either.Either<ReadonlyArray<number>, string>
}

/**
 * `count` producers appending one event at a time, continuously, until each has had
 * `afterRecovery` appends acknowledged that started after `recover`. Call `hit` just before
 * the failure, while the lock keeps every append waiting.
 */
const startProducers = (log: Log, count: number, afterRecovery: number) =>
  Effect.gen(function* () {
    const hit = yield* Ref.make(false)
    const recovered = yield* Ref.make(false)
    const acknowledged = yield* SubscriptionRef.make(0)
    const attempts: Array<Attempt> = []
    const produce = (producer: number) =>
      Effect.gen(function* () {
        let acknowledgedAfter = 0
        for (let n = 0; acknowledgedAfter < afterRecovery; n++) {
          const before = !(yield* Ref.get(hit))
          const after = yield* Ref.get(recovered)
          const outcome = yield* Effect.either(log.append([event(producer, n)]))
          attempts.push({
            key: `${producer}:${n}`,
            inFlight: before && (yield* Ref.get(hit)),
            afterRecovery: after,
            outcome: Either.mapBoth(outcome, {
              onLeft: (error) => error.message,
              onRight: (offsets) => offsets.map(Number)
            })
          })
          if (Either.isRight(outcome)) {
            yield* SubscriptionRef.update(acknowledged, (k) => k + 1)
            if (after) acknowledgedAfter++
          }
        }
      })
    const fiber = yield* Effect.forEach(range(count), produce, {
      concurrency: "unbounded",
      discard: true
    }).pipe(Effect.forkScoped)
    return {
      attempts,
      /** Waits until at least `total` appends were acknowledged. */
      acknowledged: (total: number) =>
        acknowledged.changes.pipe(
          Stream.takeUntil((k) => k >= total),
          Stream.runDrain
        ),
      hit: Ref.set(hit, true),
      recover: Ref.set(recovered, true),
      finished: Fiber.join(fiber).pipe(
        Effect.timeoutFail({
          duration: "20 seconds",
          onTimeout: () =>
            new Error(
              `appends stopped completing: after 20 s, ${attempts.length} had returned, ` +
                `${attempts.filter((a) => a.afterRecovery && Either.isRight(a.outcome)).length} of ` +
                `${count * afterRecovery} wanted after recovery; is the writer stuck?`
            )
        })
      )
    }
  })

/** A subscriber from the first offset, recording what it receives. */
const follow = (log: Log, name: string) =>
  Effect.gen(function* () {
    const received: Array<number> = []
    const last = yield* SubscriptionRef.make(0)
    const fiber = yield* log.subscribe({ _tag: "Offset", offset: 1 }, all).pipe(
      Stream.runForEach((event) =>
        Effect.suspend(() => {
          received.push(Number(event.offset))
          return SubscriptionRef.set(last, Number(event.offset))
        })
      ),
      Effect.forkScoped
    )
    const ended = Effect.flatMap(Fiber.await(fiber), (exit) =>
      Effect.fail(
        new Error(
          `the ${name} subscription ended after offset ${received.at(-1) ?? 0}: ` +
            (Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "it completed")
        )
      )
    )
    return {
      received,
      /** Waits until it has received `head`; fails if the subscription ends or stalls first. */
      caughtUp: (head: number) =>
        last.changes.pipe(
          Stream.takeUntil((offset) => offset >= head),
          Stream.runDrain,
          Effect.raceFirst(ended),
          Effect.timeoutFail({
            duration: "15 seconds",
            onTimeout: () =>
              new Error(`the ${name} subscriber stalled at offset ${received.at(-1) ?? 0} of ${head}`)
          })
        )
    }
  })

/** Everything in the log, in offset order. */
const readAll = (log: Log) =>
  Effect.gen(function* () {
    const events: Array<StoredEvent> = []
    for (;;) {
      const page = yield* log.read((events.at(-1)?.offset ?? 0) + 1, all, 10_000)
      if (page.length === 0) return events
      events.push(...page)
    }
  })

/** What keeps `offsets` from being exactly 1..head: gaps, repeats, a short or long tail. */
const anomalies = (offsets: ReadonlyArray<number>, head: number): Array<string> => {
  const found: Array<string> = []
  let expected = 1
  for (const offset of offsets) {
    if (offset < expected) found.push(`${offset} again after ${expected - 1}`)
    if (offset > expected) found.push(`${expected}..${offset - 1} missing`)
    expected = Math.max(expected, offset + 1)
  }
  if (expected !== head + 1) found.push(`ends at ${expected - 1}, head is ${head}`)
  return found.slice(0, 20)
}

/** The stored history against what producers were told: gapless, nothing twice, nothing lost. */
const expectHistory = (
  stored: ReadonlyArray<StoredEvent>,
  attempts: ReadonlyArray<Attempt>,
  head: number
) => {
  expect(
    anomalies(
      stored.map((e) => Number(e.offset)),
      head
    )
  ).toEqual([])
  const seen = new Set<string>()
  const twice: Array<string> = []
  const at = new Map<number, string>()
  // The log's own events (a `system.alert` about a failed write) take offsets too.
  for (const e of stored.filter((e) => e.source.component === source.component)) {
    const key = keyOf(e.data)
    if (seen.has(key)) twice.push(key)
    seen.add(key)
    at.set(Number(e.offset), key)
  }
  expect(twice).toEqual([])
  const lost = attempts.flatMap((a) =>
    Either.isRight(a.outcome) && a.outcome.right.some((offset) => at.get(offset) !== a.key)
      ? [
          `${a.key} acknowledged at ${a.outcome.right.join(",")}, found ${a.outcome.right.map((o) => at.get(o))}`
        ]
      : []
  )
  expect(lost).toEqual([])
}

const readCounter = (admin: pg.Client) =>
  Effect.map(query<{ head: string }>(admin, "SELECT head FROM vibes_event_head"), (rows) =>
    Number(rows[0]?.head)
  )

describe("Postgres event log when every connection to its database is killed", () => {
  it.live(
    "keeps every acknowledged append exactly once with gapless offsets, retries the killed write, and its subscribers receive the whole sequence",
    () =>
      Effect.gen(function* () {
        const { url } = yield* TestDatabase.databaseUrl
        const nodeA = yield* startNode(url, "vibes-a")
        const nodeB = yield* startNode(url, "vibes-b")
        const admin = yield* connectAdmin(url)
        const live = yield* follow(nodeA, "live")
        const remote = yield* follow(nodeB, "other node's")
        const producers = yield* startProducers(nodeA, 6, 25)
        yield* producers.acknowledged(200)

        const lock = yield* lockEvents(url)
        const cut = yield* follow(nodeA, "cut-off")
        yield* writeAndReadBlocked(admin, "vibes-a")
        yield* producers.hit
        const killed = yield* killEveryBackend(admin)
        yield* lock.release
        yield* producers.recover
        yield* producers.finished

        const listening = (node: string) => killed.some((b) => b.application_name === node && isListen(b))
        expect([listening("vibes-a"), listening("vibes-b")]).toEqual([true, true])

        const head = yield* readCounter(admin)
        expectHistory(yield* readAll(nodeA), producers.attempts, head)
        expect(producers.attempts.filter((a) => a.inFlight).length).toBeGreaterThan(0)
        expect(producers.attempts.filter((a) => Either.isLeft(a.outcome))).toEqual([])
        for (const follower of [live, cut, remote]) {
          yield* follower.caughtUp(head)
          expect(anomalies(follower.received, head)).toEqual([])
        }
      }).pipe(Effect.scoped),
    60_000
  )

  it.live("listens again, so another node's commits keep waking its subscribers", () =>
    Effect.gen(function* () {
      const { url } = yield* TestDatabase.databaseUrl
      const nodeA = yield* startNode(url, "vibes-a")
      const nodeB = yield* startNode(url, "vibes-b")
      const admin = yield* connectAdmin(url)
      const listening = (killed: ReadonlySet<number>) =>
        Effect.map(backends(admin), (rows) =>
          ["vibes-a", "vibes-b"].every((node) =>
            rows.some((b) => b.application_name === node && isListen(b) && !killed.has(b.pid))
          )
        )
      yield* eventually(listening(new Set()), "both nodes to LISTEN")
      const killed = new Set((yield* killEveryBackend(admin)).map((b) => b.pid))
      yield* eventually(listening(killed), "both nodes to LISTEN again after the kill", "5 seconds")

      const remote = yield* follow(nodeB, "other node's")
      const offsets = yield* nodeA.append(range(10).map((n) => event(0, n)))
      const last = Number(offsets.at(-1))
      yield* remote.caughtUp(last)
      expect(anomalies(remote.received, last)).toEqual([])
    }).pipe(Effect.scoped)
  )
})

describe("Postgres event log when the embedded Postgres is killed and restarted", () => {
  it.live(
    "loses no acknowledged append, resumes its subscribers without gap or duplicate, and appends again",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir("vibes-pg-restart-")
        const supervisor = yield* PgSupervisor.make({ dataDir: dir, maxRestarts: 5 })
        const node = yield* startNode(supervisor.url, "vibes-a")
        const admin = yield* connectAdmin(supervisor.url)
        const live = yield* follow(node, "live")
        const producers = yield* startProducers(node, 4, 25)
        yield* producers.acknowledged(200)

        yield* lockEvents(supervisor.url)
        const cut = yield* follow(node, "cut-off")
        yield* writeAndReadBlocked(admin, "vibes-a")
        const pid = yield* supervisor.pid.pipe(
          Effect.map(Option.getOrThrowWith(() => new Error("no postgres is running")))
        )
        const before = yield* supervisor.restarts
        yield* producers.hit
        process.kill(pid, "SIGKILL")
        // `restarts` moves before the restart begins, so "running" read after it is the new server.
        const restarted = Effect.all([supervisor.restarts, SubscriptionRef.get(supervisor.status)]).pipe(
          Effect.map(
            ([restarts, status]) => restarts > before && (status === "running" || status === "failed")
          )
        )
        yield* supervisor.status.changes.pipe(
          Stream.filterEffect(() => restarted),
          Stream.runHead,
          Effect.timeoutFail({
            duration: "30 seconds",
            onTimeout: () => new Error("the supervisor did not restart Postgres within 30 s")
          })
        )
        expect(yield* SubscriptionRef.get(supervisor.status)).toBe("running")
        yield* producers.recover
        yield* producers.finished

        const after = yield* connectAdmin(supervisor.url)
        const head = yield* readCounter(after)
        expectHistory(yield* readAll(node), producers.attempts, head)
        expect(producers.attempts.filter((a) => a.inFlight).length).toBeGreaterThan(0)
        // Appends in flight during the outage may fail (it outlasts the writer's retries); later ones may not.
        expect(producers.attempts.filter((a) => a.afterRecovery && Either.isLeft(a.outcome))).toEqual([])
        for (const follower of [live, cut]) {
          yield* follower.caughtUp(head)
          expect(anomalies(follower.received, head)).toEqual([])
        }
        yield* eventually(
          Effect.map(backends(after), (rows) => rows.some(isListen)),
          "the node to LISTEN on the restarted server",
          "5 seconds"
        )
      }).pipe(Effect.scoped),
    60_000
  )
})
