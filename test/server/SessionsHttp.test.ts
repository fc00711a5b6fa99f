import * as childProcess from "node:child_process"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import { maxInputBytes } from "../../rpc/Sessions.js"
import { eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as TestServer from "../support/TestServer.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(
  Node,
  Effect.tap(TestServer.start, (server) => stopPtyHostAtEnd(server.dataDir))
)

interface Answer {
  readonly status: number
  readonly type: string
  readonly body: unknown
  readonly text: string
}

/** A REST call with the node's token (unless `token` says otherwise). */
const rest = (
  route: string,
  init: { method?: string; body?: string; type?: string; token?: string | null } = {}
) =>
  Effect.flatMap(Node, (server) =>
    Effect.promise(async (): Promise<Answer> => {
      const token = init.token === undefined ? server.token : init.token
      const response = await fetch(`${server.url}${route}`, {
        method: init.method ?? "GET",
        headers: {
          ...(token === null ? {} : { authorization: `Bearer ${token}` }),
          ...(init.type !== undefined ? { "content-type": init.type } : {})
        },
        ...(init.body !== undefined ? { body: init.body } : {})
      })
      const type = response.headers.get("content-type") ?? ""
      const text = await response.text()
      return { status: response.status, type, text, body: type.includes("json") ? JSON.parse(text) : text }
    })
  )

const postJson = (route: string, body: unknown) =>
  rest(route, { method: "POST", body: JSON.stringify(body), type: "application/json" })

const field = (value: unknown, key: string): unknown =>
  typeof value === "object" && value !== null ? Reflect.get(value, key) : undefined

/** Waits until the session's screen (as text) shows `text`. */
const screenShows = (id: string, text: string) =>
  eventually(
    Effect.map(rest(`/api/sessions/${id}/screen`), (answer) =>
      answer.status === 200 && answer.text.includes(text) ? Option.some(answer.text) : Option.none()
    ),
    `the screen to show ${text}`
  )

const sessionCount = Effect.map(rest("/api/sessions"), (answer) =>
  Array.isArray(answer.body) ? answer.body.length : -1
)

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("sessions over REST", (it) => {
  it.scoped("create, type (raw, text, base64), resize, read the screen three ways, signal, close", () =>
    Effect.gen(function* () {
      const created = yield* postJson("/api/sessions", {
        command: "/bin/sh",
        args: ["-c", 'stty -echo; while read -r line; do echo "got:$line"; done'],
        cols: 60,
        rows: 10,
        name: "rest"
      })
      expect(created.status).toBe(201)
      const id = String(field(created.body, "id"))
      expect(field(created.body, "state")).toBe("running")

      const raw = yield* rest(`/api/sessions/${id}/input`, {
        method: "POST",
        body: "one\n",
        type: "application/octet-stream"
      })
      expect(raw.status).toBe(204)
      yield* screenShows(id, "got:one")
      expect((yield* postJson(`/api/sessions/${id}/input`, { text: "two\n" })).status).toBe(204)
      yield* screenShows(id, "got:two")
      const base64 = Buffer.from("three\n").toString("base64")
      expect((yield* postJson(`/api/sessions/${id}/input`, { base64 })).status).toBe(204)
      yield* screenShows(id, "got:three")
      // curl's default type for --data is a form; the bytes are typed as they are.
      expect(
        (yield* rest(`/api/sessions/${id}/input`, {
          method: "POST",
          body: "four\n",
          type: "application/x-www-form-urlencoded"
        })).status
      ).toBe(204)
      yield* screenShows(id, "got:four")

      expect((yield* postJson(`/api/sessions/${id}/resize`, { cols: 70, rows: 12 })).status).toBe(204)
      const screen = yield* rest(`/api/sessions/${id}/screen?format=json`)
      expect(screen.status).toBe(200)
      expect(screen.body).toMatchObject({ cols: 70, rows: 12 })
      expect(String(field(screen.body, "text"))).toContain("got:one")
      const vt = yield* rest(`/api/sessions/${id}/screen?format=vt`)
      expect(vt.status).toBe(200)
      expect(vt.text).toContain("got:two")
      expect(vt.text).toContain("\x1b[")

      const info = yield* rest(`/api/sessions/${id}`)
      expect(info.body).toMatchObject({ id, name: "rest", cols: 70, rows: 12, state: "running" })
      const listed = yield* rest("/api/sessions?state=running")
      expect(Array.isArray(listed.body) && listed.body.some((session) => field(session, "id") === id)).toBe(
        true
      )

      expect((yield* postJson(`/api/sessions/${id}/signal`, { signal: "TERM" })).status).toBe(204)
      const ended = yield* eventually(
        Effect.map(rest(`/api/sessions/${id}`), (answer) =>
          field(answer.body, "state") === "exited" ? Option.some(answer.body) : Option.none()
        ),
        "the session to end on SIGTERM"
      )
      expect(ended).toMatchObject({ exitSignal: "SIGTERM" })
      const refused = yield* postJson(`/api/sessions/${id}/input`, { text: "five\n" })
      expect(refused.status).toBe(409)
      expect(refused.body).toMatchObject({ error: "SessionNotRunning" })

      // Closing a session that ended: answered with the session, which stays ended.
      const after = yield* rest(`/api/sessions/${id}`, { method: "DELETE" })
      expect(after.status).toBe(200)
      expect(after.body).toMatchObject({ id, state: "exited", exitSignal: "SIGTERM" })

      // Closing a running one ends its program.
      const running = yield* postJson("/api/sessions", { command: "/bin/cat" })
      const runningId = String(field(running.body, "id"))
      const closed = yield* rest(`/api/sessions/${runningId}`, { method: "DELETE" })
      expect(closed.status).toBe(200)
      expect(closed.body).toMatchObject({ id: runningId, state: "closed" })
      expect((yield* rest(`/api/sessions/${runningId}`)).body).toMatchObject({ state: "closed" })
    })
  )

  it.scoped("bad input gets a clear error and changes nothing", () =>
    Effect.gen(function* () {
      const before = yield* sessionCount
      const expectRefused = (answer: Answer, status: number, error: string, fieldName?: string) => {
        expect(answer.status).toBe(status)
        expect(answer.body).toMatchObject({ error })
        if (fieldName !== undefined) expect(answer.body).toMatchObject({ field: fieldName })
      }
      expectRefused(
        yield* rest("/api/sessions", { method: "POST", body: "{not json", type: "application/json" }),
        400,
        "BadRequest"
      )
      expectRefused(yield* postJson("/api/sessions", { command: "sh", color: "red" }), 400, "BadRequest")
      expectRefused(
        yield* postJson("/api/sessions", { command: "sh", cols: 0 }),
        400,
        "InvalidSessionRequest",
        "size"
      )
      expectRefused(yield* postJson("/api/sessions", { command: "/nonexistent/program" }), 422, "SpawnFailed")
      expectRefused(yield* rest("/api/sessions?state=sleeping"), 400, "BadRequest")
      expect(yield* sessionCount).toBe(before)

      // Unknown sessions, whether or not the id could be one.
      for (const id of ["nope", "..%2F..%2Fetc", "01890a5d-ac96-774b-bcce-b302099a8057"]) {
        expectRefused(yield* rest(`/api/sessions/${id}`), 404, "SessionNotFound")
        expectRefused(yield* rest(`/api/sessions/${id}/screen`), 404, "SessionNotFound")
        expectRefused(yield* postJson(`/api/sessions/${id}/input`, { text: "x" }), 404, "SessionNotFound")
        expectRefused(yield* rest(`/api/sessions/${id}`, { method: "DELETE" }), 404, "SessionNotFound")
      }

      const created = yield* postJson("/api/sessions", { command: "/bin/cat", cols: 40, rows: 5 })
      expect(created.status).toBe(201)
      const id = String(field(created.body, "id"))
      expectRefused(
        yield* postJson(`/api/sessions/${id}/input`, { text: "a", base64: "YQ==" }),
        400,
        "BadRequest"
      )
      expectRefused(
        yield* postJson(`/api/sessions/${id}/input`, { base64: "not base64!" }),
        400,
        "BadRequest"
      )
      expectRefused(
        yield* rest(`/api/sessions/${id}/input`, {
          method: "POST",
          body: "a".repeat(maxInputBytes + 1),
          type: "application/octet-stream"
        }),
        413,
        "PayloadTooLarge"
      )
      expectRefused(
        yield* postJson(`/api/sessions/${id}/resize`, { cols: "wide", rows: 5 }),
        400,
        "BadRequest"
      )
      expectRefused(
        yield* postJson(`/api/sessions/${id}/resize`, { cols: 5000, rows: 5 }),
        400,
        "InvalidSessionRequest"
      )
      expectRefused(
        yield* postJson(`/api/sessions/${id}/signal`, { signal: "STOP" }),
        400,
        "BadRequest",
        "signal"
      )
      expectRefused(yield* rest(`/api/sessions/${id}/screen?format=png`), 400, "BadRequest")
      const info = yield* rest(`/api/sessions/${id}`)
      expect(info.body).toMatchObject({ cols: 40, rows: 5, state: "running" })
      // Nothing was typed into it: its screen is still empty.
      expect((yield* rest(`/api/sessions/${id}/screen`)).text.trim()).toBe("")

      // No credentials, or wrong ones: refused before the body is read, and nothing happens.
      for (const token of [null, "wrong-token"]) {
        const denied = yield* rest("/api/sessions", {
          method: "POST",
          body: JSON.stringify({ command: "/bin/sh" }),
          type: "application/json",
          token
        })
        expect(denied.status).toBe(401)
        expect((yield* rest(`/api/sessions/${id}/input`, { method: "POST", body: "x", token })).status).toBe(
          401
        )
      }
      expect(yield* sessionCount).toBe(before + 1)
      expect((yield* rest(`/api/sessions/${id}/screen`)).text.trim()).toBe("")
      expect((yield* rest(`/api/sessions/${id}`, { method: "DELETE" })).status).toBe(200)
    })
  )

  it.scoped("the README's curl example works as written", () =>
    Effect.gen(function* () {
      const server = yield* Node
      // Run beside the server (in this process), not blocking it.
      const curl = (args: ReadonlyArray<string>) =>
        Effect.async<string, Error>((resume) => {
          const child = childProcess.execFile(
            "curl",
            ["-sS", "--fail-with-body", "-H", `Authorization: Bearer ${server.token}`, ...args],
            { encoding: "utf8" },
            (error, stdout, stderr) =>
              resume(
                error === null ? Effect.succeed(stdout) : Effect.fail(new Error(`curl: ${stderr}${stdout}`))
              )
          )
          return Effect.sync(() => child.kill())
        })
      const created = JSON.parse(
        yield* curl([
          "-H",
          "Content-Type: application/json",
          "-d",
          '{"command":"bash","args":["--norc","--noprofile"]}',
          `${server.url}/api/sessions`
        ])
      ) as unknown
      const id = String(field(created, "id"))
      yield* curl(["--data-binary", "echo hello from curl\n", `${server.url}/api/sessions/${id}/input`])
      const screen = yield* eventually(
        Effect.map(curl([`${server.url}/api/sessions/${id}/screen`]), (text) =>
          text.includes("hello from curl\n") ? Option.some(text) : Option.none()
        ),
        "curl to read the output"
      )
      expect(screen).toContain("echo hello from curl")
      yield* curl(["-X", "DELETE", `${server.url}/api/sessions/${id}`])
    })
  )
})
