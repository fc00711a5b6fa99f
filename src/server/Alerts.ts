/**
 * Alerts as events: conditions an operator must act on are checked on an interval, and each one
 * that starts to hold writes a `system.alert` (severity `warn`, or `critical` for a nearly full
 * disk) and a log line; when it stops holding, a `system.alert` with `resolved: true` (severity
 * `info`). The conditions:
 *
 * - `disk_low`: the filesystem of the data dir (the embedded Postgres, local storage, a bundled
 *   nats-server) has less than `diskFreePercent` free;
 * - `consumer_lag`: a named event-log consumer is more than `consumerLag` events behind the head;
 * - `restarts`: a supervised child (the PTY host, the embedded Postgres, nats-server) was
 *   restarted `restarts` times or more within `restartsWithin`.
 *
 * An alert the log cannot take (a full disk refuses writes) is tried again at the next check, so
 * it is written once space returns; the log line is written at once. `vibes_alerts_firing` shows
 * what holds now.
 */
import * as fs from "node:fs"
import { Duration, Effect, Metric, MetricLabel, Schedule } from "effect"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import * as ChildSupervisor from "../../actors/supervisors/ChildSupervisor.js"

/** When to raise alerts. */
export interface Options {
  readonly dataDir: string
  readonly every: Duration.Duration
  /** Free space of the data dir's filesystem, in percent, below which `disk_low` holds. */
  readonly diskFreePercent: number
  /** Events a named consumer may be behind the head before `consumer_lag` holds. */
  readonly consumerLag: number
  /** Restarts of one supervised child within `restartsWithin` that make `restarts` hold. */
  readonly restarts: number
  readonly restartsWithin: Duration.Duration
}

/** The supervised children, by their metric label. */
const children = ["pty-host", "postgres", "nats"] as const

const firingGauge = Metric.gauge("vibes_alerts_firing", {
  description: "Alert conditions that hold now (1) or not (0), by condition and subject"
})

/** What one check found: the conditions that hold, by key, with what to say. */
interface Finding {
  readonly condition: string
  readonly subject: string
  readonly message: string
  readonly severity: "warn" | "critical"
}

/** Free space of `dir`'s filesystem, in percent, and in bytes. */
const freeSpace = (dir: string) =>
  Effect.try({
    try: () => {
      const stats = fs.statfsSync(dir)
      const total = stats.blocks * stats.bsize
      const free = stats.bavail * stats.bsize
      return { percent: total === 0 ? 100 : (100 * free) / total, free, total }
    },
    catch: (error) => new Error(`cannot read the free space of ${dir}: ${String(error)}`)
  })

const mib = (bytes: number) => `${(bytes / (1024 * 1024)).toFixed(1)} MiB`

/** Checks the conditions every `options.every` for the life of the caller's fiber. */
export const run = (options: Options) =>
  Effect.gen(function* () {
    const log = yield* EventLog
    const emitter = yield* Emitter
    /** Conditions that held at the last check, by key. */
    const firing = new Map<string, Finding>()
    /** Alerts and resolutions not in the log yet, in the order they happened. */
    const unwritten: Array<{ readonly finding: Finding; readonly resolved: boolean }> = []
    /** Restart counts seen, per child, with when. */
    const restartSamples = new Map<string, Array<{ at: number; count: number }>>()

    const check = Effect.gen(function* () {
      const found: Array<Finding> = []
      const disk = yield* Effect.either(freeSpace(options.dataDir))
      if (disk._tag === "Right" && disk.right.percent < options.diskFreePercent) {
        found.push({
          condition: "disk_low",
          subject: options.dataDir,
          severity: disk.right.percent < options.diskFreePercent / 5 ? "critical" : "warn",
          message: `the data dir's filesystem (${options.dataDir}) has ${disk.right.percent.toFixed(1)}% free (${mib(disk.right.free)} of ${mib(disk.right.total)}); below ${options.diskFreePercent}%, writes may start to fail: free space, or lower retention (vibes events stats)`
        })
      }
      const lagging = yield* Effect.either(Effect.zip(log.head, log.consumers))
      if (lagging._tag === "Right") {
        const [head, consumers] = lagging.right
        for (const consumer of consumers) {
          const lag = head - consumer.offset
          if (lag > options.consumerLag) {
            found.push({
              condition: "consumer_lag",
              subject: consumer.name,
              severity: "warn",
              message: `the event consumer '${consumer.name}' is ${lag} events behind the head (#${head}); retention keeps what it has not passed, so the log grows until it catches up`
            })
          }
        }
      }
      const now = Date.now()
      const window = Duration.toMillis(options.restartsWithin)
      for (const child of children) {
        const state = yield* Metric.value(Metric.tagged(ChildSupervisor.restartsTotal, "child", child))
        const samples = (restartSamples.get(child) ?? []).filter((s) => now - s.at <= window)
        samples.push({ at: now, count: state.count })
        restartSamples.set(child, samples)
        const restarted = state.count - (samples[0]?.count ?? state.count)
        if (restarted >= options.restarts) {
          found.push({
            condition: "restarts",
            subject: child,
            severity: "warn",
            message: `${child} was restarted ${restarted} times in the last ${Duration.format(options.restartsWithin)}; see its log in the data dir`
          })
        }
      }
      return found
    })

    const write = (finding: Finding, resolved: boolean) =>
      emitter
        .emit(
          "system.alert",
          {
            component: "alerts",
            message: resolved
              ? `resolved: ${finding.condition} (${finding.subject}) no longer holds`
              : finding.message,
            condition: finding.condition,
            ...(resolved ? { resolved: true } : {})
          },
          { component: "alerts", severity: resolved ? "info" : finding.severity }
        )
        .pipe(Effect.map((offset) => offset > 0))

    const gauge = (finding: Finding, value: number) =>
      firingGauge.pipe(
        Metric.taggedWithLabels([
          MetricLabel.make("condition", finding.condition),
          MetricLabel.make("subject", finding.subject)
        ]),
        Metric.set(value)
      )

    const round = Effect.gen(function* () {
      const found = yield* check
      const keys = new Set(found.map((f) => `${f.condition}:${f.subject}`))
      for (const finding of found) {
        const key = `${finding.condition}:${finding.subject}`
        if (firing.has(key)) continue
        yield* Effect.logWarning(`alert: ${finding.message}`).pipe(
          Effect.annotateLogs({ condition: finding.condition })
        )
        firing.set(key, finding)
        unwritten.push({ finding, resolved: false })
        yield* gauge(finding, 1)
      }
      for (const [key, finding] of firing) {
        if (keys.has(key)) continue
        firing.delete(key)
        yield* Effect.logInfo(`alert resolved: ${finding.condition} (${finding.subject})`).pipe(
          Effect.annotateLogs({ condition: finding.condition })
        )
        unwritten.push({ finding, resolved: true })
        yield* gauge(finding, 0)
      }
      // In order, up to the first the log does not take (it is tried again at the next check).
      while (unwritten.length > 0) {
        const next = unwritten[0]
        if (next === undefined || !(yield* write(next.finding, next.resolved))) break
        unwritten.shift()
      }
    })

    return yield* round.pipe(
      Effect.catchAllCause((cause) => Effect.logWarning("the alert check failed", cause)),
      Effect.repeat(Schedule.spaced(options.every))
    )
  })
