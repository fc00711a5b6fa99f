/**
 * The standing fuzz suite: malformed and hostile input thrown at every public surface of a real
 * node — RPC frames (raw bytes, wrong-shaped and truncated msgpack, hostile requests), every REST
 * route and query parameter, SSE parameters, proxy paths and headers, CLI arguments and plain TCP
 * garbage. A fixed seed and a bounded budget keep it deterministic and affordable.
 *
 * What must hold throughout: no 5xx for a client fault, no process or entity crash, `/healthz`
 * answers within a second during and after, and no secret (the admin token, a provider key) ever
 * appears in a response, a log line or an event.
 */
import { expect, layer } from "@effect/vitest"
import { Context, Effect, FastCheck as fc, Layer, Logger, Schedule } from "effect"
import * as NodeSocket from "@effect/platform-node/NodeSocket"
import { Packr, Unpackr } from "msgpackr"
import type WebSocket from "ws"
import { AttachCloseCode, attachProtocol, maxClientFrameBytes } from "../../rpc/AttachProtocol.js"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import * as FreePort from "../../infra/net/FreePort.js"
import * as FakeProvider from "../support/FakeProvider.js"
import * as HttpClient from "../support/HttpClient.js"
import * as RawRpc from "../support/RawRpc.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

const seed = 20_261_206
const providerKey = "sk-fuzz-provider-key-0123456789abcdef"
const keyVariable = "VIBES_TEST_FUZZ_PROVIDER_KEY"

interface Env {
  readonly server: TestServer.Running
  readonly logs: Array<string>
  /** The slowest `/healthz` answer seen by the watcher, in milliseconds. */
  readonly slowestHealth: () => number
}
class FuzzEnv extends Context.Tag("test/FuzzEnv")<FuzzEnv, Env>() {}

const logs: Array<string> = []

const EnvLive = Layer.scoped(
  FuzzEnv,
  Effect.gen(function* () {
    const fake = yield* FakeProvider.make({ apiKey: providerKey })
    process.env[keyVariable] = providerKey
    yield* Effect.addFinalizer(() => Effect.sync(() => delete process.env[keyVariable]))
    const server = yield* TestServer.startWith({
      proxyRate: 1000,
      proxyBurst: 1000,
      proxyProviders: [
        FakeProvider.providerConfig("openai", fake.url, {
          keyEnv: keyVariable,
          retry: { maxAttempts: 1, initialDelayMs: 10, maxDelayMs: 50, maxRetryAfterMs: 1000 },
          circuit: { failures: 10_000, openMs: 1000 }
        })
      ]
    })
    // Watches /healthz the whole time, so a stall anywhere shows as a slow answer.
    let slowest = 0
    yield* Effect.forkScoped(
      Effect.gen(function* () {
        const started = Date.now()
        const answer = yield* HttpClient.request(`${server.url}/healthz`).pipe(Effect.orDie)
        expect(answer.status).toBe(200)
        slowest = Math.max(slowest, Date.now() - started)
      }).pipe(Effect.repeat(Schedule.spaced("200 millis")))
    )
    return { server, logs, slowestHealth: () => slowest }
  })
).pipe(
  Layer.provide(
    Logger.replace(
      Logger.defaultLogger,
      Logger.map(Logger.logfmtLogger, (line) => void logs.push(line))
    )
  )
)

const secretsOf = (env: Env) => [env.server.token, providerKey]

const expectNoSecret = (env: Env, text: string) => {
  for (const secret of secretsOf(env)) expect(text).not.toContain(secret)
}

/** Runs a fast-check property whose body is an Effect. */
const property = <A>(
  arbitrary: fc.Arbitrary<A>,
  numRuns: number,
  check: (value: A) => Effect.Effect<void, unknown>
) =>
  Effect.promise(() =>
    fc.assert(
      fc.asyncProperty(arbitrary, (value) => Effect.runPromise(Effect.asVoid(Effect.orDie(check(value))))),
      { seed, numRuns, endOnFailure: true }
    )
  )

const client = (server: TestServer.Running) =>
  Client.layer({ url: server.url, token: TestServer.redacted(server) }).pipe(
    Layer.provide(NodeSocket.layerWebSocketConstructor)
  )

// RPC frames -------------------------------------------------------------------------------------

/** Close codes a hostile frame may earn: a clean end, protocol error, unsupported data, policy, too big. */
const allowedCloses = new Set([1000, 1002, 1003, 1008, 1009])

/** What became of a socket after a hostile frame and then a Ping. */
type Outcome = { readonly _tag: "Closed"; readonly code: number } | { readonly _tag: "Alive" }

/**
 * Sends `frames` on a fresh authenticated socket, then a Ping: the socket either answers the Ping
 * (everything before it was handled) or is closed by the server. Every message it sent back is
 * checked for secrets.
 */
const probe = (env: Env, frames: ReadonlyArray<Buffer>) =>
  Effect.scoped(
    Effect.gen(function* () {
      const socket: WebSocket = yield* RawRpc.open(env.server.url, env.server.token)
      const unpackr = new Unpackr({ useRecords: true })
      const outcome = yield* Effect.async<Outcome>((resume) => {
        socket.on("message", (data: Buffer) => {
          expectNoSecret(env, data.toString("latin1"))
          let messages: Array<unknown> = []
          try {
            messages = unpackr.unpackMultiple(data) ?? []
          } catch {
            messages = []
          }
          expectNoSecret(
            env,
            JSON.stringify(messages, (_key, value: unknown) =>
              typeof value === "bigint" ? String(value) : value
            )
          )
          if (
            messages.some(
              (message) =>
                typeof message === "object" &&
                message !== null &&
                "_tag" in message &&
                message._tag === "Pong"
            )
          ) {
            resume(Effect.succeed({ _tag: "Alive" }))
          }
        })
        socket.once("close", (code) => resume(Effect.succeed({ _tag: "Closed", code })))
        for (const frame of frames) socket.send(frame)
        socket.send(new Packr({ useRecords: true }).pack({ _tag: "Ping" }))
      }).pipe(
        Effect.timeoutFail({
          duration: "20 seconds",
          onTimeout: () => new Error("the socket neither answered nor closed")
        })
      )
      if (outcome._tag === "Closed") expect(allowedCloses.has(outcome.code)).toBe(true)
      return outcome
    })
  )

const rpcTags = [...Client.VibesRpcs.requests.keys()]

/** Close codes the attach socket may give a hostile client (`rpc/AttachProtocol.ts`), and 1002 from ws. */
const attachCloses = new Set<number>([...Object.values(AttachCloseCode), 1002, 1007])

/** RPCs that would start programs: fuzzed with a harmless command only. */
const starting = new Set(["Sessions.Create", "Jobs.Submit", "Jobs.Execute"])

// REST -------------------------------------------------------------------------------------------

const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.fullUnicodeString({ maxLength: 20 }),
  fc.constantFrom(
    "",
    "0",
    "-1",
    "1e400",
    "../../etc/passwd",
    "%00",
    "\u0000",
    "\ud800",
    "latest",
    "x".repeat(5000)
  )
)

/** Percent-encodes any string, lone surrogates included (as U+FFFD). */
const encode = (value: string) => encodeURIComponent(Buffer.from(value, "utf8").toString("utf8"))

/** Raw URL pieces a browser would never send: invalid UTF-8, encoded NUL and separators. */
const rawPiece = fc.constantFrom(
  "%ED%A0%80",
  "%FF%FE",
  "%00",
  "%2F..%2F",
  "%",
  "%zz",
  "..",
  ";",
  "%0d%0aSet-Cookie:%20x=1"
)

/** A header value Node will send: printable ASCII only. */
const headerValue = (value: string) => value.replace(/[^\x20-\x7e]/g, "?")

const idLike = fc.oneof(fc.uuid(), text)

/** A JSON body that cannot start anything but `true` if it happens to be a valid job. */
const safeBody = fc.oneof(
  fc.json().map((json) => {
    try {
      const value: unknown = JSON.parse(json)
      if (typeof value === "object" && value !== null && !Array.isArray(value)) {
        return JSON.stringify({ ...value, command: "true", shell: false, strategy: "stream" })
      }
    } catch {
      // not an object
    }
    return json
  }),
  text,
  fc.constantFrom('{"command":"true","args":["\\u0000"]}', '{"jobId":"\\ud800"}', "{", "[]", "null")
)

const routes = [
  ["GET", "/api/jobs"],
  ["GET", "/api/jobs/:id"],
  ["GET", "/api/jobs/:id/logs"],
  ["POST", "/api/jobs"],
  ["POST", "/api/jobs/cancel"],
  ["GET", "/api/jobs/:id/artifacts"],
  ["GET", "/api/jobs/:id/artifact"],
  ["GET", "/api/events"],
  ["GET", "/api/whoami"],
  ["GET", "/readyz"],
  ["GET", "/metrics"],
  ["GET", "/login"],
  ["POST", "/login"],
  ["POST", "/logout"],
  ["GET", "/"],
  ["GET", "/assets/:id"],
  ["DELETE", "/api/jobs/:id"],
  ["PUT", "/api/events"],
  ["GET", "/api/sessions"],
  ["POST", "/api/sessions"],
  ["GET", "/api/sessions/:id"],
  ["DELETE", "/api/sessions/:id"],
  ["POST", "/api/sessions/:id/input"],
  ["POST", "/api/sessions/:id/resize"],
  ["POST", "/api/sessions/:id/signal"],
  ["GET", "/api/sessions/:id/screen"],
  ["POST", "/api/sessions/:id/export"],
  ["GET", "/api/sessions/:id/recordings/:id"],
  ["PUT", "/api/sessions/:id"]
] as const

const restRequest = fc.record({
  route: fc.constantFrom(...routes),
  id: idLike,
  query: fc.dictionary(
    fc.oneof(
      fc.constantFrom(
        "limit",
        "status",
        "after",
        "follow",
        "types",
        "session",
        "job",
        "tenant",
        "from",
        "consumer",
        "token",
        "state",
        "format",
        "name"
      ),
      text
    ),
    text,
    { maxKeys: 4 }
  ),
  body: safeBody,
  contentType: fc.constantFrom(
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "multipart/form-data; boundary=x",
    ""
  ),
  auth: fc.constantFrom("token", "none", "wrong", "cookie"),
  lastEventId: fc.option(text, { nil: undefined }),
  raw: fc.option(rawPiece, { nil: undefined })
})

// Tests ------------------------------------------------------------------------------------------

layer(EnvLive, { timeout: 600_000, excludeTestServices: true })("hostile input at every surface", (it) => {
  it.effect(
    "raw bytes, wrong-shaped and truncated msgpack on an RPC socket close it cleanly or are answered",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const packr = new Packr({ useRecords: true })
        const valid = packr.pack({ _tag: "Request", id: "1", tag: "System.Info", payload: {}, headers: [] })
        const frames = fc.oneof(
          fc.uint8Array({ maxLength: 2048 }).map((bytes) => [Buffer.from(bytes)]),
          fc.anything().map((value) => [new Packr({ useRecords: true }).pack(value)]),
          fc.integer({ min: 1, max: valid.length - 1 }).map((cut) => [valid.subarray(0, cut)]),
          fc
            .array(fc.anything(), { minLength: 2, maxLength: 40 })
            .map((values) => [
              Buffer.concat(values.map((value) => new Packr({ useRecords: true }).pack(value)))
            ]),
          fc.constant([Buffer.alloc(1024 * 1024 + 1, 0x01)])
        )
        yield* property(frames, 150, (payload) => probe(env, payload))
      }),
    300_000
  )

  it.effect(
    "requests with arbitrary payloads for every RPC are answered, never crash the connection",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const request = fc.record({
          tag: fc.constantFrom(...rpcTags.filter((tag) => !starting.has(tag)), "Nope.Nothing"),
          payload: fc.anything(),
          headers: fc.array(fc.tuple(fc.string({ maxLength: 20 }), fc.string({ maxLength: 20 })), {
            maxLength: 4
          })
        })
        yield* property(request, 150, ({ headers, payload, tag }) =>
          Effect.map(
            probe(env, [
              new Packr({ useRecords: true }).pack({ _tag: "Request", id: "7", tag, payload, headers })
            ]),
            (outcome) => expect(outcome._tag).toBe("Alive")
          )
        )
      }),
    300_000
  )

  it.effect(
    "hostile fields in requests that start programs are refused as client faults, never as outages",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const fields = fc.record({
          args: fc.array(text, { maxLength: 4 }),
          env: fc.dictionary(text, text, { maxKeys: 3 }),
          name: fc.option(text, { nil: undefined }),
          cwd: fc.option(fc.constantFrom("/tmp", "/nonexistent", "\u0000", "../..", ""), { nil: undefined }),
          labels: fc.dictionary(text, text, { maxKeys: 2 })
        })
        yield* property(fields, 40, (input) =>
          Effect.gen(function* () {
            const rpc = yield* Client.VibesClient
            const session = yield* Effect.either(
              rpc.Sessions.Create({
                command: "true",
                args: input.args,
                env: input.env,
                ...(input.name !== undefined ? { name: input.name } : {}),
                ...(input.cwd !== undefined ? { cwd: input.cwd } : {})
              })
            )
            if (session._tag === "Left") {
              expect(["InvalidSessionRequest", "SpawnFailed"]).toContain(session.left._tag)
              expectNoSecret(env, session.left.message)
            }
            const job = yield* Effect.either(
              rpc.Jobs.Submit({
                command: "true",
                args: input.args,
                env: input.env,
                labels: input.labels,
                ...(input.cwd !== undefined ? { cwd: input.cwd } : {})
              })
            )
            if (job._tag === "Left") {
              expect(job.left._tag).toBe("InvalidJobRequest")
              expectNoSecret(env, job.left.message)
            }
          }).pipe(Effect.provide(client(env.server)))
        )
      }),
    300_000
  )

  it.effect(
    "every REST route and parameter answers a client fault with a 4xx and leaks nothing",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const { server } = env
        const login = yield* HttpClient.request(
          `${server.url}/login?token=${encodeURIComponent(server.token)}`,
          {
            localAddress: "127.0.0.31"
          }
        )
        const cookie = HttpClient.setCookie(login, "vibes_login") ?? ""
        yield* property(restRequest, 250, (input) =>
          Effect.gen(function* () {
            const [method, template] = input.route
            const path = template.replaceAll(":id", input.raw ?? encode(input.id))
            const query = Object.entries(input.query)
              .map(([key, value]) => `${encode(key)}=${input.raw ?? encode(value)}`)
              .join("&")
            const headers: Record<string, string> = {}
            if (input.contentType !== "") headers["content-type"] = input.contentType
            if (input.lastEventId !== undefined) headers["last-event-id"] = headerValue(input.lastEventId)
            if (input.auth === "token") headers["authorization"] = `Bearer ${server.token}`
            if (input.auth === "wrong") headers["authorization"] = `Bearer ${headerValue(input.id)}`
            if (input.auth === "cookie") headers["cookie"] = cookie
            const answer = yield* HttpClient.request(
              `${server.url}${path}${query === "" ? "" : `?${query}`}`,
              {
                method,
                headers,
                ...(method === "GET" ? {} : { body: input.body }),
                // The wrong tokens come from an address of their own, which they may lock out.
                localAddress: input.auth === "wrong" ? "127.0.0.30" : "127.0.0.31",
                headersOnly: method === "GET" && (template === "/api/events" || template.endsWith("/logs"))
              }
            )
            expect(answer.status).toBeLessThan(500)
            expectNoSecret(env, answer.body)
            expectNoSecret(env, JSON.stringify(answer.headers))
          })
        )
      }),
    300_000
  )

  it.effect(
    "proxy paths and headers are refused or passed on, never a 5xx of the proxy's own",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const { server } = env
        const request = fc.record({
          path: fc.oneof(
            fc.constantFrom(
              "openai/v1/chat/completions",
              "openai/v1/models",
              "openai/../admin",
              "nope/v1/x",
              "openai",
              ""
            ),
            fc.webPath().map((path) => `openai${path}`),
            text.map(encode),
            rawPiece.map((piece) => `openai/${piece}`)
          ),
          method: fc.constantFrom("GET", "POST", "PUT", "DELETE"),
          credential: fc.constantFrom("token", "none", "wrong", "x-api-key", "malformed"),
          body: safeBody,
          header: fc.tuple(
            fc.constantFrom("content-type", "accept", "x-forwarded-for", "cookie", "anthropic-version"),
            fc.string({ maxLength: 30 }).filter((value) => /^[\x20-\x7e]*$/.test(value))
          )
        })
        yield* property(request, 150, (input) =>
          Effect.gen(function* () {
            const headers: Record<string, string> = { [input.header[0]]: headerValue(input.header[1]) }
            if (input.credential === "token") headers["authorization"] = `Bearer ${server.token}`
            if (input.credential === "wrong") headers["authorization"] = "Bearer nope-nope-nope-nope"
            if (input.credential === "x-api-key") headers["x-api-key"] = server.token
            if (input.credential === "malformed") headers["authorization"] = "Basic Zm9vOmJhcg=="
            const answer = yield* HttpClient.request(`${server.url}/proxy/${input.path}`, {
              method: input.method,
              headers,
              ...(input.method === "GET" ? {} : { body: input.body }),
              localAddress:
                input.credential === "wrong" || input.credential === "malformed" ? "127.0.0.32" : "127.0.0.33"
            })
            expect(answer.status).toBeLessThan(500)
            expectNoSecret(env, answer.body)
            expectNoSecret(env, JSON.stringify(answer.headers))
          })
        )
      }),
    300_000
  )

  it.effect(
    "hostile parameters and frames on the attach socket earn a 4xx, a defined close code or an answer",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const { server } = env
        const session = yield* Effect.flatMap(Client.VibesClient, (rpc) =>
          rpc.Sessions.Create({ command: "/bin/cat" })
        ).pipe(Effect.provide(client(server)))
        const frame = fc.oneof(
          fc.uint8Array({ maxLength: 512 }).map((bytes) => ({ binary: true, data: Buffer.from(bytes) })),
          text.map((data) => ({ binary: false, data: Buffer.from(data, "utf8") })),
          fc.anything().map((value) => ({
            binary: false,
            data: Buffer.from(
              JSON.stringify(value, (_key, v: unknown) => (typeof v === "bigint" ? 0 : v)) ?? "null"
            )
          })),
          fc.record({ cols: fc.oneof(fc.integer(), fc.double(), text), rows: fc.integer() }).map((size) => ({
            binary: false,
            data: Buffer.from(JSON.stringify({ _tag: "Resize", ...size }))
          })),
          fc.constant({ binary: true, data: Buffer.alloc(maxClientFrameBytes + 1, 0x61) }),
          fc.constant({ binary: false, data: Buffer.from([0xff, 0xfe, 0x00]) })
        )
        const attempt = fc.record({
          id: fc.oneof(fc.constant(session.id), idLike),
          raw: fc.option(rawPiece, { nil: undefined }),
          query: fc.dictionary(
            fc.constantFrom("cols", "rows", "from", "readOnly", "scrollback", "x"),
            fc.oneof(text, fc.integer().map(String), fc.constantFrom("true", "false", "NaN", "1e9")),
            { maxKeys: 4 }
          ),
          frames: fc.array(frame, { maxLength: 5 })
        })
        const seen = { refused: 0, closed: 0, alive: 0 }
        yield* property(attempt, 80, (input) =>
          Effect.scoped(
            Effect.gen(function* () {
              const query = Object.entries(input.query)
                .map(([key, value]) => `${key}=${encode(value)}`)
                .join("&")
              const upgraded = yield* RawRpc.upgrade(server.url, {
                path: `/api/sessions/${input.raw ?? encode(input.id)}/attach?${query}`,
                protocols: [attachProtocol],
                headers: { authorization: `Bearer ${server.token}` }
              })
              if (upgraded._tag === "Refused") {
                seen.refused++
                expect(upgraded.status).toBeGreaterThanOrEqual(400)
                expect(upgraded.status).toBeLessThan(500)
                expectNoSecret(env, upgraded.body)
                return
              }
              const socket = upgraded.socket
              // The socket is either closed by the server with a code the protocol defines, or
              // still answers a ping once it has taken every frame.
              const outcome = yield* Effect.async<Outcome>((resume) => {
                socket.once("close", (code) => resume(Effect.succeed({ _tag: "Closed", code })))
                socket.once("pong", () => resume(Effect.succeed({ _tag: "Alive" })))
                for (const { binary, data } of input.frames) socket.send(data, { binary })
                socket.ping()
              }).pipe(
                Effect.timeoutFail({
                  duration: "20 seconds",
                  onTimeout: () => new Error("the attach socket neither answered nor closed")
                })
              )
              if (outcome._tag === "Closed") {
                seen.closed++
                expect(attachCloses.has(outcome.code)).toBe(true)
              } else seen.alive++
              for (const { data } of RawRpc.framesOf(socket)) expectNoSecret(env, data.toString("latin1"))
            })
          )
        )
        yield* Effect.flatMap(Client.VibesClient, (rpc) =>
          rpc.Sessions.Close({ sessionId: session.id })
        ).pipe(Effect.provide(client(server)))
      }),
    300_000
  )

  it.effect(
    "garbage on the bare TCP port gets a 4xx or a closed connection",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const garbage = fc.oneof(
          fc.uint8Array({ minLength: 1, maxLength: 4096 }).map((bytes) => Buffer.from(bytes)),
          fc
            .constantFrom(
              "GET / HTTP/1.1\r\n\r\n",
              `GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n`,
              `POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n`,
              `GET /${"a".repeat(70_000)} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`
            )
            .map((line) => Buffer.from(line))
        )
        yield* property(garbage, 60, (bytes) =>
          Effect.map(RawRpc.rawHttp(env.server.url, bytes), (answer) => {
            if (answer !== "") expect(answer).toMatch(/^HTTP\/1\.1 4\d\d /)
            expectNoSecret(env, answer)
          })
        )
      }),
    300_000
  )

  it.effect(
    "the CLI answers any arguments with a usage error or a clean failure, never a crash",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        // A closed port: the arguments are what is under test, and nothing can be started.
        const closed = yield* FreePort.find()
        const args = fc
          .oneof(
            fc.array(
              fc.string({ maxLength: 12 }).filter((arg) => !arg.includes("\u0000")),
              { maxLength: 4 }
            ),
            fc
              .tuple(
                fc.constantFrom(
                  "ls",
                  "events",
                  "jobs",
                  "logs",
                  "status",
                  "snapshot",
                  "kill",
                  "attach",
                  "send",
                  "cancel",
                  "proxy",
                  "cluster"
                ),
                fc.array(
                  fc.oneof(
                    fc.string({ maxLength: 12 }),
                    fc.constantFrom(
                      "--json",
                      "--limit",
                      "-1",
                      "--from",
                      "--type",
                      "**",
                      "--signal",
                      "--url",
                      "ftp://x"
                    )
                  ),
                  { maxLength: 4 }
                )
              )
              .map(([command, rest]) => [command, ...rest.filter((arg) => !arg.includes("\u0000"))])
          )
          .filter((argv) => !["serve", "pty-host", "run", "new"].includes(argv[0] ?? ""))
        yield* property(args, 8, (argv) =>
          Effect.map(
            Vibes.run(
              argv,
              Vibes.childEnv({
                VIBES_URL: `http://127.0.0.1:${closed}`,
                VIBES_TOKEN: "fuzz-token-fuzz-token"
              })
            ),
            (result) => {
              expect([0, 1, 2, 3]).toContain(result.code)
              expect(result.stderr).not.toMatch(/\n\s+at .+:\d+:\d+\)?\n/)
              expectNoSecret(env, result.stdout + result.stderr)
            }
          )
        )
      }),
    300_000
  )

  it.effect(
    "afterwards the node is whole: /healthz was never slow, sessions work, nothing leaked",
    () =>
      Effect.gen(function* () {
        const env = yield* FuzzEnv
        const { server } = env
        expect(env.slowestHealth()).toBeLessThan(1000)
        const health = yield* HttpClient.request(`${server.url}/healthz`)
        expect(health.status).toBe(200)
        yield* Effect.gen(function* () {
          const rpc = yield* Client.VibesClient
          const session = yield* rpc.Sessions.Create({ command: "/bin/cat" })
          yield* rpc.Sessions.Input({
            sessionId: session.id,
            data: new TextEncoder().encode("still-alive\n")
          })
          yield* rpc.Sessions.Snapshot({ sessionId: session.id }).pipe(
            Effect.filterOrFail((screen) => screen.text.includes("still-alive")),
            Effect.retry(Schedule.spaced("50 millis")),
            Effect.timeout("20 seconds")
          )
          yield* rpc.Sessions.Close({ sessionId: session.id })
          const events = yield* rpc.Events.Read({ from: 1, filter: EventFilter.make({}), limit: 10_000 })
          expectNoSecret(env, JSON.stringify(events))
        }).pipe(Effect.provide(client(server)))
        expect(env.logs.length).toBeGreaterThan(0)
        for (const line of env.logs) {
          expectNoSecret(env, line)
          expect(line).not.toContain("BUG:")
          expect(line).not.toContain("level=FATAL")
        }
      }),
    300_000
  )
})
