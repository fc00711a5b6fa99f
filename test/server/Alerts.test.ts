import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Option } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { runningHostPid } from "../../infra/pty/PtyHostRpcs.js"
import { eventually } from "../support/Attach.js"
import * as SmallFs from "../support/SmallFs.js"
import * as TestServer from "../support/TestServer.js"

interface Alert {
  readonly condition?: string
  readonly resolved?: boolean
  readonly message: string
}

const alertsOf = (client: Client.Client) =>
  Effect.map(
    client.Events.Read({ from: 1, filter: EventFilter.make({ types: ["system.alert"] }), limit: 1000 }),
    (events) => events.map((event: StoredEvent) => ({ event, alert: event.data as Alert }))
  )

/** Waits for an alert of `condition` (resolved or not) and returns it. */
const awaitAlert = (client: Client.Client, condition: string, resolved: boolean) =>
  eventually(
    Effect.map(alertsOf(client), (alerts) =>
      Option.fromNullable(
        alerts.find((a) => a.alert.condition === condition && (a.alert.resolved === true) === resolved)
      )
    ),
    `a${resolved ? " resolved" : "n"} ${condition} alert`,
    30_000
  )

const clientOf = (server: TestServer.Running) =>
  Effect.map(
    Layer.build(
      Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
        Layer.provide(NodeSocket.layerWebSocketConstructor)
      )
    ),
    Context.get(Client.VibesClient)
  )

const metrics = (server: TestServer.Running) =>
  Effect.promise(() =>
    fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.token}` } }).then((r) =>
      r.text()
    )
  )

describe("alerts", () => {
  it.scopedLive(
    "a data dir's filesystem running out of space raises disk_low, and resolves once space returns",
    () =>
      Effect.gen(function* () {
        // 24 MiB of its own: what the node keeps there is a few kilobytes.
        const dataDir = yield* SmallFs.make(24)
        const server = yield* TestServer.startWith({
          dataDir,
          alerts: {
            every: Duration.millis(100),
            diskFreePercent: 20,
            consumerLag: 100_000,
            restarts: 3,
            restartsWithin: Duration.minutes(10)
          }
        })
        const client = yield* clientOf(server)
        // Fill it to 90%.
        const ballast = path.join(dataDir, "ballast")
        const fill = SmallFs.free(dataDir) - Math.floor(SmallFs.size(dataDir) * 0.1)
        fs.writeFileSync(ballast, Buffer.alloc(fill))
        const raised = yield* awaitAlert(client, "disk_low", false)
        expect(raised.event.severity).toBe("warn")
        expect(raised.alert.message).toContain(dataDir)
        expect(raised.alert.message).toMatch(/has \d+\.\d% free/)
        const scrape = yield* metrics(server)
        expect(scrape).toMatch(/vibes_alerts_firing\{[^}]*condition="disk_low"[^}]*\} 1/)

        fs.rmSync(ballast)
        const resolved = yield* awaitAlert(client, "disk_low", true)
        expect(resolved.event.severity).toBe("info")
        expect(resolved.event.offset).toBeGreaterThan(raised.event.offset)
        // Raised once, resolved once: nothing before the disk filled.
        const all = (yield* alertsOf(client)).filter((a) => a.alert.condition === "disk_low")
        expect(all.map((a) => a.alert.resolved === true)).toEqual([false, true])
      }),
    120_000
  )

  it.scopedLive(
    "a consumer far behind the head raises consumer_lag; the PTY host restarted again and again raises restarts",
    () =>
      Effect.gen(function* () {
        const server = yield* TestServer.startWith({
          alerts: {
            every: Duration.millis(100),
            diskFreePercent: 1,
            consumerLag: 5,
            restarts: 2,
            restartsWithin: Duration.minutes(10)
          }
        })
        const client = yield* clientOf(server)
        const { head } = yield* client.Events.Head()
        yield* client.Events.Commit({ consumer: "archiver", offset: 1 })
        // More events than the lag allowed: each status call is one.
        for (let i = 0; i < 8; i++) yield* client.System.Info()
        expect((yield* client.Events.Head()).head).toBeGreaterThan(head + 5)
        const lagging = yield* awaitAlert(client, "consumer_lag", false)
        expect(lagging.alert.message).toContain("'archiver'")
        const now = (yield* client.Events.Head()).head
        yield* client.Events.Commit({ consumer: "archiver", offset: now })
        yield* awaitAlert(client, "consumer_lag", true)

        // The PTY host dies twice; its supervisor starts it again each time (as its restart count
        // says: a host killed before it answered the supervisor would not be a restart yet).
        for (let i = 1; i <= 2; i++) {
          const pid = yield* eventually(
            Effect.sync(() => runningHostPid(server.dataDir)),
            "a running PTY host",
            30_000
          )
          process.kill(pid, "SIGKILL")
          yield* eventually(
            Effect.map(metrics(server), (text) =>
              /vibes_supervised_restarts_total\{[^}]*child="pty-host"[^}]*\} (\d+)/.exec(text)?.[1] ===
              String(i)
                ? Option.some(i)
                : Option.none()
            ),
            `restart ${i} of the PTY host`,
            30_000
          )
        }
        const restarts = yield* awaitAlert(client, "restarts", false)
        expect(restarts.alert.message).toContain("pty-host was restarted 2 times")
      }),
    120_000
  )
})
