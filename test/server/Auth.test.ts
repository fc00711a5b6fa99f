import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, layer } from "@effect/vitest"
import { Context, Duration, Effect, Either, Layer, Option, Redacted, Schedule, TestClock } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import * as Logins from "../../infra/auth/Logins.js"
import * as ClientAddress from "../../infra/net/ClientAddress.js"
import * as Migrations from "../../infra/db/Migrations.js"
import { eventually } from "../support/Attach.js"
import * as HttpClient from "../support/HttpClient.js"
import * as RawRpc from "../support/RawRpc.js"
import * as TestDatabase from "../support/TestDatabase.js"
import * as TestServer from "../support/TestServer.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const client = (server: TestServer.Running) =>
  Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

/** Every event of `types` so far, oldest first. */
const eventsOf = (server: TestServer.Running, types: ReadonlyArray<string>) =>
  Effect.flatMap(Client.VibesClient, (c) =>
    c.Events.Read({ from: 1, filter: EventFilter.make({ types }), limit: 1000 })
  ).pipe(Effect.provide(client(server)))

/** Waits (bounded) until `count` events of `type` from `address` are in the log. */
const awaitEvents = (server: TestServer.Running, type: string, address: string, count: number) =>
  eventsOf(server, [type]).pipe(
    Effect.map((events) =>
      events.filter(
        (event: StoredEvent) => (event.data as { clientAddress?: string }).clientAddress === address
      )
    ),
    Effect.filterOrFail((events) => events.length >= count),
    Effect.retry(Schedule.spaced("50 millis")),
    Effect.timeout("20 seconds")
  )

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

layer(Layer.scoped(Node, TestServer.start), { timeout: 120_000, excludeTestServices: true })(
  "credentials",
  (it) => {
    it.effect(
      "after five refused tokens an address is locked out (429, unchecked) on every surface; others are not",
      () =>
        Effect.gen(function* () {
          const server = yield* Node
          const attacker = "127.0.0.5"
          const get = (headers: Record<string, string>, localAddress = attacker) =>
            HttpClient.request(`${server.url}/readyz`, { headers, localAddress })
          for (let i = 0; i < 5; i++)
            expect((yield* get(bearer(`wrong-token-${i}-xxxxxxxx`))).status).toBe(401)
          expect((yield* get(bearer("wrong-token-6-xxxxxxxx"))).status).toBe(401)
          const locked = yield* get(bearer(server.token))
          expect(locked.status).toBe(429)
          expect(Number(locked.headers["retry-after"])).toBeGreaterThanOrEqual(1)
          const upgrade = yield* RawRpc.upgrade(server.url, {
            headers: bearer(server.token),
            localAddress: attacker
          }).pipe(Effect.scoped)
          expect(upgrade).toMatchObject({ _tag: "Refused", status: 429 })
          const proxied = yield* HttpClient.request(`${server.url}/proxy/openai/v1/models`, {
            headers: bearer(server.token),
            localAddress: attacker
          })
          expect(proxied.status).toBe(429)
          const login = yield* HttpClient.request(
            `${server.url}/login?token=${encodeURIComponent(server.token)}`,
            { localAddress: attacker }
          )
          expect(login.status).toBe(429)
          expect(HttpClient.setCookie(login, "vibes_login")).toBeUndefined()
          // Another address is not affected.
          expect((yield* get(bearer(server.token), "127.0.0.6")).status).toBe(200)

          const failures = yield* awaitEvents(server, "auth.login_failed", attacker, 6)
          expect(
            failures.map((event) => (event.data as { lockedForMillis: number }).lockedForMillis)
          ).toEqual([0, 0, 0, 0, 0, 1000])
          for (const event of failures) expect(JSON.stringify(event)).not.toContain(server.token)
        })
    )

    it.effect("a browser login is a revocable login id: the cookie never holds the token", () =>
      Effect.gen(function* () {
        const server = yield* Node
        const address = "127.0.0.7"
        const login = yield* HttpClient.request(`${server.url}/login`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: `token=${encodeURIComponent(server.token)}`,
          localAddress: address
        })
        expect(login.status).toBe(303)
        const cookie = HttpClient.setCookie(login, "vibes_login") ?? ""
        expect(cookie).toMatch(/^vibes_login=[A-Za-z0-9_-]{43}$/)
        expect(cookie).not.toContain(server.token)
        const line = (login.headers["set-cookie"] ?? []).find((text) => text.startsWith("vibes_login=")) ?? ""
        expect(line).toMatch(/HttpOnly/)
        expect(line).toMatch(/SameSite=Strict/)
        expect(line).toMatch(/Max-Age=\d+/)

        const whoami = yield* HttpClient.request(`${server.url}/api/whoami`, {
          headers: { cookie },
          localAddress: address
        })
        expect(whoami.status).toBe(200)
        expect(JSON.parse(whoami.body)).toMatchObject({
          kind: "admin",
          via: "cookie",
          clientAddress: address
        })

        const logout = yield* HttpClient.request(`${server.url}/logout`, {
          method: "POST",
          headers: { cookie },
          localAddress: address
        })
        expect(logout.status).toBe(303)
        // The same cookie value, replayed after the logout, is refused and cleared.
        const replay = yield* HttpClient.request(`${server.url}/api/whoami`, {
          headers: { cookie },
          localAddress: address
        })
        expect(replay.status).toBe(401)
        expect(HttpClient.setCookie(replay, "vibes_login")).toBe("vibes_login=")
        const upgrade = yield* RawRpc.upgrade(server.url, {
          headers: { cookie },
          localAddress: address
        }).pipe(Effect.scoped)
        expect(upgrade).toMatchObject({ _tag: "Refused", status: 401 })

        const logins = yield* awaitEvents(server, "auth.login", address, 1)
        const logouts = yield* awaitEvents(server, "auth.logout", address, 1)
        expect((logins[0]?.data as { login: string }).login).toBe(
          (logouts[0]?.data as { login: string }).login
        )
      })
    )

    it.effect("the cookie of earlier versions (the token itself) is no longer accepted", () =>
      Effect.gen(function* () {
        const server = yield* Node
        const answer = yield* HttpClient.request(`${server.url}/api/whoami`, {
          headers: { cookie: `vibes_token=${server.token}` },
          localAddress: "127.0.0.8"
        })
        expect(answer.status).toBe(401)
      })
    )
  }
)

layer(
  Layer.scoped(
    Node,
    TestServer.startWith({
      trustedProxies: Either.getOrThrow(ClientAddress.parseTrustedProxies("127.0.0.9"))
    })
  ),
  { timeout: 120_000, excludeTestServices: true }
)("behind a trusted reverse proxy", (it) => {
  it.effect("the client address is the one the trusted proxy names, and only then", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const forwarded = { "x-forwarded-for": "203.0.113.9", ...bearer("wrong-token-xxxxxxxxxx") }
      expect(
        (yield* HttpClient.request(`${server.url}/readyz`, { headers: forwarded, localAddress: "127.0.0.9" }))
          .status
      ).toBe(401)
      expect(
        (yield* HttpClient.request(`${server.url}/readyz`, {
          headers: forwarded,
          localAddress: "127.0.0.10"
        })).status
      ).toBe(401)
      expect(yield* awaitEvents(server, "auth.login_failed", "203.0.113.9", 1)).toHaveLength(1)
      expect(yield* awaitEvents(server, "auth.login_failed", "127.0.0.10", 1)).toHaveLength(1)
    })
  )
})

layer(TestDatabase.layerSql, { timeout: 120_000 })("the login store", (it) => {
  it.effect("ids are rotated after an hour, keep a grace, expire, and a logout revokes the whole login", () =>
    Effect.gen(function* () {
      yield* Migrations.run
      const logins = yield* Logins.make(Logins.defaults)
      const who = { address: "192.0.2.1", userAgent: "test" }
      const first = yield* logins.create("admin", who)
      expect(Option.isSome(yield* logins.verify(first.id))).toBe(true)
      expect(logins.rotationDue(first.login, first.login.issuedAt)).toBe(false)

      yield* TestClock.adjust(Duration.hours(1))
      const now = new Date(yield* Effect.clockWith((clock) => clock.currentTimeMillis))
      expect(logins.rotationDue(first.login, now)).toBe(true)
      const second = Option.getOrThrow(yield* logins.rotate(first.id, who))
      expect(second.login.ref).toBe(first.login.ref)
      // A second rotation of the same id loses: only one new id per id.
      expect(Option.isNone(yield* logins.rotate(first.id, who))).toBe(true)
      yield* TestClock.adjust(Duration.seconds(30))
      expect(Option.isSome(yield* logins.verify(first.id))).toBe(true)
      yield* TestClock.adjust(Duration.seconds(31))
      expect(Option.isNone(yield* logins.verify(first.id))).toBe(true)
      expect(Option.isSome(yield* logins.verify(second.id))).toBe(true)

      yield* TestClock.adjust(Duration.days(7))
      expect(Option.isNone(yield* logins.verify(second.id))).toBe(true)

      const third = yield* logins.create("admin", who)
      yield* TestClock.adjust(Duration.hours(2))
      const fourth = Option.getOrThrow(yield* logins.rotate(third.id, who))
      expect(Option.isSome(yield* logins.revoke(fourth.id))).toBe(true)
      expect(Option.isNone(yield* logins.verify(third.id))).toBe(true)
      expect(Option.isNone(yield* logins.verify(fourth.id))).toBe(true)
      expect(Option.isNone(yield* logins.verify("not-an-id"))).toBe(true)
    })
  )
})

describe("vibes serve as a process", () => {
  layer(Layer.empty, { timeout: 120_000, excludeTestServices: true })("its log", (it) => {
    it.scoped(
      "never carries the admin token (the login URL goes to a 0600 file) or a refused credential, which it logs with the client address",
      () =>
        Effect.gen(function* () {
          const dataDir = yield* tempDir("vibes-auth-")
          const database = yield* TestDatabase.databaseUrl
          const server = yield* Vibes.serve(
            dataDir,
            Vibes.childEnv({ DATABASE_URL: Redacted.value(database.url) })
          )
          const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
          const file = path.join(dataDir, "login-url")
          expect(fs.statSync(file).mode & 0o777).toBe(0o600)
          expect(fs.readFileSync(file, "utf8")).toContain(token)
          expect(server.loginUrl).toContain(token)
          expect(server.lines.length).toBeGreaterThan(0)
          for (const line of server.lines) expect(line).not.toContain(token)

          // A refused credential: logged with the client's address, never with what was sent.
          const wrong = "wrong-token-for-the-log-test-0123456789"
          const refused = yield* HttpClient.request(`${server.url}/api/whoami`, {
            headers: { authorization: `Bearer ${wrong}` },
            localAddress: "127.0.0.19"
          })
          expect(refused.status).toBe(401)
          const logged = yield* eventually(
            Effect.sync(() => Option.fromNullable(server.lines.find((line) => line.includes("127.0.0.19")))),
            "the refusal's log line"
          )
          expect(JSON.parse(logged)).toMatchObject({ logLevel: "WARN" })
          for (const line of server.lines) expect(line).not.toContain(wrong)
        })
    )
  })
})
