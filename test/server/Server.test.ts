import * as fs from "node:fs"
import * as path from "node:path"
import WebSocket from "ws"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import * as Socket from "@effect/platform/Socket"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import * as Client from "../../rpc/Client.js"
import * as TestServer from "../support/TestServer.js"

class TestServerTag extends Context.Tag("test/TestServer")<TestServerTag, TestServer.Running>() {}

const call = (url: string, token: Option.Option<Redacted.Redacted<string>>) =>
  Effect.flatMap(Client.VibesClient, (client) => client.System.Info()).pipe(
    Effect.provide(Client.layer({ url, token }).pipe(Layer.provide(NodeSocket.layerWebSocketConstructor)))
  )

/** A WebSocket constructor that sends a cookie on the upgrade, as a browser would. */
const withCookie = (cookie: string) =>
  Layer.succeed(
    Socket.WebSocketConstructor,
    (url, protocols) =>
      new WebSocket(url, protocols, { headers: { cookie } }) as unknown as globalThis.WebSocket
  )

const fetchText = (url: string, init: RequestInit = {}) =>
  Effect.promise(async () => {
    const response = await fetch(url, { redirect: "manual", ...init })
    return { status: response.status, headers: response.headers, body: await response.text() }
  })

/** The HTTP status a raw WebSocket upgrade of `/rpc` gets (101 when accepted). */
const upgradeStatus = (url: string, headers: Record<string, string>) =>
  Effect.async<number>((resume) => {
    const socket = new WebSocket(Client.rpcUrl(url), ["vibes.rpc.v1"], { headers })
    socket.once("unexpected-response", (_request, response) => {
      resume(Effect.succeed(response.statusCode ?? 0))
      socket.terminate()
    })
    socket.once("open", () => {
      resume(Effect.succeed(101))
      socket.close()
    })
    socket.once("error", () => undefined)
  })

const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } })

layer(Layer.scoped(TestServerTag, TestServer.start), { timeout: 120_000, excludeTestServices: true })(
  "vibes serve",
  (it) => {
    it.effect("answers /healthz without credentials", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const response = yield* fetchText(`${server.url}/healthz`)
        expect(response.status).toBe(200)
        expect(JSON.parse(response.body)).toEqual({ status: "ok" })
      })
    )

    it.effect("refuses /readyz, /metrics and / without the right token, with 401", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        for (const route of ["/readyz", "/metrics", "/"]) {
          expect((yield* fetchText(`${server.url}${route}`)).status).toBe(401)
          expect((yield* fetchText(`${server.url}${route}`, bearer("wrong-token-wrong-token"))).status).toBe(
            401
          )
        }
      })
    )

    it.effect("reports ready with the token once the database answers and migrations ran", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const response = yield* fetchText(`${server.url}/readyz`, bearer(server.token))
        expect(response.status).toBe(200)
        expect(JSON.parse(response.body)).toMatchObject({ status: "ready", migrations: "applied" })
      })
    )

    it.effect("serves Prometheus metrics with the token", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const response = yield* fetchText(`${server.url}/metrics`, bearer(server.token))
        expect(response.status).toBe(200)
        expect(response.headers.get("content-type")).toContain("text/plain")
        expect(response.body).toContain("# TYPE")
        expect(response.body).toContain('vibes_node_id="test-node"')
      })
    )

    it.effect("keeps the admin token file private (0600)", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        expect(fs.statSync(path.join(server.dataDir, "admin-token")).mode & 0o777).toBe(0o600)
      })
    )

    it.effect("refuses an RPC upgrade without credentials with 401, before any frame", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        expect(yield* upgradeStatus(server.url, {})).toBe(401)
        const error = yield* Effect.flip(call(server.url, Option.none()))
        expect(Client.refusalOf(error)).toEqual(Option.some("unauthorized"))
      })
    )

    it.effect("refuses an RPC upgrade with a wrong token with 401", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        expect(yield* upgradeStatus(server.url, { authorization: "Bearer not-the-token-at-all" })).toBe(401)
        const error = yield* Effect.flip(call(server.url, Option.some(Redacted.make("not-the-token-at-all"))))
        expect(Client.refusalOf(error)).toEqual(Option.some("unauthorized"))
      })
    )

    it.effect("answers System.Info with the right token", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const info = yield* call(server.url, TestServer.redacted(server))
        expect(info.nodeId).toBe("test-node")
        expect(info.database).toBe("external")
        expect(info.version).toMatch(/^\d+\.\d+\.\d+/)
        expect(info.uptimeMillis).toBeGreaterThanOrEqual(0)
      })
    )

    it.effect("logs a browser in with a strict httpOnly cookie that then authenticates RPC", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const login = yield* fetchText(server.announcement.loginUrl)
        expect(login.status).toBe(303)
        expect(login.headers.get("location")).toBe("/")
        const cookie = login.headers.getSetCookie().find((line) => line.startsWith("vibes_login=")) ?? ""
        expect(cookie).toMatch(/HttpOnly/i)
        expect(cookie).toMatch(/SameSite=Strict/i)
        expect(cookie).not.toContain(server.token)
        const pair = cookie.split(";")[0] ?? ""
        expect((yield* fetchText(`${server.url}/`, { headers: { cookie: pair } })).status).toBe(200)

        const info = yield* Effect.flatMap(Client.VibesClient, (client) => client.System.Info()).pipe(
          Effect.provide(
            Client.layer({ url: server.url, token: Option.none() }).pipe(Layer.provide(withCookie(pair)))
          )
        )
        expect(info.nodeId).toBe("test-node")
      })
    )

    it.effect("refuses a wrong login token and sets no cookie", () =>
      Effect.gen(function* () {
        const server = yield* TestServerTag
        const response = yield* fetchText(`${server.url}/login?token=nope`)
        expect(response.status).toBe(401)
        expect(response.headers.get("set-cookie")).toBeNull()
      })
    )
  }
)
