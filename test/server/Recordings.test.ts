import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Chunk, Context, DateTime, Effect, Layer, Option, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { clientLayer, eventually, stopPtyHostAtEnd } from "../support/Attach.js"
import * as HttpClient from "../support/HttpClient.js"
import { tempDir } from "../support/TempDir.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(
  Node,
  Effect.tap(TestServer.start, (server) => stopPtyHostAtEnd(server.dataDir))
)

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

type CastEvent = readonly [number, "o" | "r", string]

/** A recording's header and events. */
const parse = (text: string) => {
  const [header, ...events] = text.trimEnd().split("\n")
  return {
    header: JSON.parse(header ?? "null") as Record<string, unknown>,
    events: events.map((line) => JSON.parse(line) as CastEvent)
  }
}

const output = (events: ReadonlyArray<CastEvent>) =>
  events.flatMap(([, kind, data]) => (kind === "o" ? [data] : [])).join("")

/** Exports the session until its recording shows `text`; the recording's info and its text. */
const exportShowing = (rpc: Client.Client, sessionId: string, text: string) =>
  eventually(
    Effect.gen(function* () {
      const info = yield* rpc.Recordings.Export({ sessionId })
      const bytes = yield* rpc.Recordings.Download({ sessionId, name: info.name }).pipe(
        Stream.runCollect,
        Effect.map((chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)))
      )
      const cast = bytes.toString("utf8")
      return output(parse(cast).events).includes(text) ? Option.some({ info, cast, bytes }) : Option.none()
    }),
    `a recording that shows ${text}`
  )

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("session recordings", (it) => {
  it.scoped("a session exports as asciicast v2: header, timed output (UTF-8 whole), resizes, in order", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create({
        command: "/bin/sh",
        args: ["-c", 'stty -echo; while read -r line; do echo "got:$line"; done'],
        cols: 60,
        rows: 10,
        name: "recorded"
      })
      const sessionId = session.id
      yield* rpc.Sessions.Input({ sessionId, data: new TextEncoder().encode("héllo ✓\n") })
      yield* exportShowing(rpc, sessionId, "got:héllo ✓")
      yield* rpc.Sessions.Resize({ sessionId, cols: 100, rows: 30 })
      yield* rpc.Sessions.Input({ sessionId, data: new TextEncoder().encode("world\n") })
      const { info, cast, bytes } = yield* exportShowing(rpc, sessionId, "got:world")
      const { header, events } = parse(cast)
      expect(header).toMatchObject({ version: 2, width: 60, height: 10, title: "recorded" })
      expect(typeof header["timestamp"]).toBe("number")
      const text = output(events)
      expect(text.indexOf("got:héllo ✓\r\n")).toBeGreaterThanOrEqual(0)
      expect(text.indexOf("got:world\r\n")).toBeGreaterThan(text.indexOf("got:héllo ✓"))
      const resize = events.findIndex(([, kind, data]) => kind === "r" && data === "100x30")
      const world = events.findIndex(([, kind, data]) => kind === "o" && data.includes("got:world"))
      expect(resize).toBeGreaterThanOrEqual(0)
      expect(resize).toBeLessThan(world)
      const times = events.map(([time]) => time)
      expect(times).toEqual([...times].sort((a, b) => a - b))
      expect(info.size).toBe(bytes.length)
      expect(info.name).toMatch(/^\d{8}T\d{6}Z-[0-9a-f]{8}\.cast$/)
    })
  )

  it.scoped("REST exports and streams a recording; vibes export saves one; unknown ids are refused", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const rpc = yield* client
      const session = yield* rpc.Sessions.Create({
        command: "/bin/sh",
        args: ["-c", "echo rest-recorded; exec sleep 60"]
      })
      yield* exportShowing(rpc, session.id, "rest-recorded")
      const auth = { authorization: `Bearer ${server.token}` }
      const exported = yield* HttpClient.request(`${server.url}/api/sessions/${session.id}/export`, {
        method: "POST",
        headers: auth
      })
      expect(exported.status).toBe(201)
      const { name, size } = JSON.parse(exported.body) as { name: string; size: number }
      const fetched = yield* HttpClient.request(
        `${server.url}/api/sessions/${session.id}/recordings/${name}`,
        {
          headers: auth
        }
      )
      expect([fetched.status, fetched.headers["content-type"], Buffer.byteLength(fetched.body)]).toEqual([
        200,
        "application/x-asciicast",
        size
      ])
      expect(output(parse(fetched.body).events)).toContain("rest-recorded")
      expect(
        (yield* HttpClient.request(`${server.url}/api/sessions/${session.id}/recordings/${name}`)).status
      ).toBe(401)
      const unknownId = "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293"
      expect(
        (yield* HttpClient.request(`${server.url}/api/sessions/${unknownId}/export`, {
          method: "POST",
          headers: auth
        })).status
      ).toBe(404)
      expect(
        (yield* HttpClient.request(`${server.url}/api/sessions/${session.id}/recordings/..%2F..%2Fx.cast`, {
          headers: auth
        })).status
      ).toBe(400)
      expect(
        (yield* HttpClient.request(
          `${server.url}/api/sessions/${session.id}/recordings/20000101T000000Z-00000000.cast`,
          { headers: auth }
        )).status
      ).toBe(404)

      const out = yield* tempDir("vibes-export-")
      const target = path.join(out, "s.cast")
      const env = Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token })
      const saved = yield* Vibes.run(["export", session.id, "-o", target], env)
      expect(saved.code).toBe(0)
      expect(output(parse(fs.readFileSync(target, "utf8")).events)).toContain("rest-recorded")
      expect((yield* Vibes.run(["export", unknownId, "-o", target], env)).code).toBe(1)
      expect((yield* Vibes.run(["export", "nope"], env)).code).toBe(2)
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped(
    "a time range records that part, timed from its start, over the screen as it was; recordings are listed",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const session = yield* rpc.Sessions.Create({
          command: "/bin/sh",
          args: ["-c", 'stty -echo; while read -r line; do echo "got:$line"; done'],
          cols: 80,
          rows: 24
        })
        const sessionId = session.id
        const say = (line: string) =>
          Effect.zipRight(
            rpc.Sessions.Input({ sessionId, data: new TextEncoder().encode(`${line}\n`) }),
            exportShowing(rpc, sessionId, `got:${line}`)
          )
        yield* say("early")
        const middle = yield* DateTime.now
        yield* say("inside")
        const end = yield* DateTime.now
        yield* say("late")
        const ranged = yield* rpc.Recordings.Export({ sessionId, from: middle, to: end })
        const bytes = yield* rpc.Recordings.Download({ sessionId, name: ranged.name }).pipe(
          Stream.runCollect,
          Effect.map((chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)).toString("utf8"))
        )
        const { header, events } = parse(bytes)
        expect(header["timestamp"]).toBe(Math.floor(DateTime.toEpochMillis(middle) / 1000))
        const text = output(events)
        // What was on the screen before the range comes first, at time 0; then the range; not after.
        expect(text).toContain("got:early")
        expect(text).toContain("got:inside")
        expect(text).not.toContain("got:late")
        const early = events.find(([, kind, data]) => kind === "o" && data.includes("got:early"))
        expect(early?.[0]).toBe(0)
        const inside = events.find(([, kind, data]) => kind === "o" && data.includes("got:inside"))
        expect(inside?.[0]).toBeGreaterThanOrEqual(0)
        expect(inside?.[0]).toBeLessThanOrEqual(
          (DateTime.toEpochMillis(end) - DateTime.toEpochMillis(middle)) / 1000
        )

        const backwards = yield* Effect.flip(rpc.Recordings.Export({ sessionId, from: end, to: middle }))
        expect(backwards._tag).toBe("InvalidRecordingRequest")
        const listed = yield* rpc.Recordings.List({ sessionId })
        expect(listed.map((r) => r.name)).toContain(ranged.name)
        expect(listed.find((r) => r.name === ranged.name)?.size).toBe(ranged.size)
        expect(listed.map((r) => r.name)).toEqual([...listed.map((r) => r.name)].sort())
        const unknown = yield* Effect.flip(
          rpc.Recordings.List({ sessionId: "nope_01939d5e-7c1e-7a2b-9c3d-4e5f60718293" })
        )
        expect(unknown._tag).toBe("SessionNotFound")
        yield* rpc.Sessions.Close({ sessionId })
      })
  )
})
