import { expect, layer } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, Effect, Layer, Redacted } from "effect"
import * as FakeProvider from "../support/FakeProvider.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { tempDir } from "../support/TempDir.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

const fakeKey = "sk-fake-for-the-cli-test"

const provider = FakeProvider.providerConfig

class Node extends Context.Tag("test/ProxyCliNode")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(
  Node,
  Effect.gen(function* () {
    const fake = yield* FakeProvider.make({ apiKey: fakeKey })
    const keys = yield* tempDir("vibes-proxy-cli-")
    const keyFile = path.join(keys, "fake.key")
    fs.writeFileSync(keyFile, fakeKey, { mode: 0o600 })
    return yield* TestServer.startWith({
      proxyProviders: [
        provider("fake", fake.url, { keyFile }),
        provider("nokey", fake.url, { keyEnv: "VIBES_TEST_PROXY_UNSET_KEY" })
      ]
    })
  })
)

const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("proxy commands", (it) => {
  it.scoped("vibes proxy ls shows providers and their health; stats counts requests and tokens", () =>
    Effect.gen(function* () {
      const server = yield* Node
      const response = yield* Effect.promise(() =>
        fetch(`${server.url}/proxy/fake/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "gpt-cli-test", messages: [{ role: "user", content: "hi" }] })
        })
      )
      expect(response.status).toBe(200)
      yield* Effect.promise(() => response.text())

      const ls = yield* vibes(["proxy", "ls"])
      expect(ls.code).toBe(0)
      expect(ls.stdout).toMatch(/^PROVIDER\s+HEALTH/m)
      expect(ls.stdout).toMatch(
        /^fake\s+ok\s+openai\s+http:\/\/127\.0\.0\.1:\d+\s+file:\S+fake\.key\s+1\s+0\s+200 /m
      )
      expect(ls.stdout).toMatch(/^nokey\s+no key\s+.*env:VIBES_TEST_PROXY_UNSET_KEY \(missing\)/m)
      // The built-in providers are there too, and no key is ever printed.
      expect(ls.stdout).toMatch(/^anthropic\s/m)
      expect(ls.stdout).not.toContain(fakeKey)
      const json = yield* vibes(["proxy", "ls", "--json"])
      const providers = JSON.parse(json.stdout) as Array<{ name: string; hasKey: boolean }>
      expect(providers.find((p) => p.name === "fake")).toMatchObject({ hasKey: true, requests: 1 })

      const stats = yield* vibes(["proxy", "stats"])
      expect(stats.code).toBe(0)
      expect(stats.stdout).toMatch(/^fake\s+gpt-cli-test\s+1\s+0\s+12\s+5\s/m)

      const help = yield* vibes(["proxy", "--help"])
      expect(help.stdout).toContain("ls")
      expect(help.stdout).toContain("stats")
    })
  )

  it.scoped("a key file readable by others, or a malformed provider list, stops serve with exit 2", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("vibes-proxy-bad-")
      const keyFile = path.join(dir, "open.key")
      fs.writeFileSync(keyFile, "sk-open", { mode: 0o644 })
      fs.chmodSync(keyFile, 0o644)
      const database = yield* TestDatabase.freshDatabase("vibes_proxy_cli")
      const env = (providers: string) =>
        Vibes.childEnv({
          DATABASE_URL: Redacted.value(database.url),
          VIBES_DATA_DIR: path.join(dir, "data"),
          VIBES_PORT: "0",
          VIBES_PROXY_PROVIDERS: providers
        })
      const open = yield* Vibes.run(
        ["serve"],
        env(
          JSON.stringify([
            { name: "open", baseUrl: "http://127.0.0.1:9", format: "openai", auth: "bearer", keyFile }
          ])
        )
      )
      expect(open.code).toBe(2)
      expect(open.stderr + open.stdout).toContain(`cannot use the key file ${keyFile}: its mode is 644`)

      const malformed = yield* Vibes.run(["serve"], env('[{"name":"Bad Name","baseUrl":"ftp://x"}]'))
      expect(malformed.code).toBe(2)
      expect(malformed.stderr + malformed.stdout).toContain(
        "VIBES_PROXY_PROVIDERS is not a valid list of providers"
      )
    })
  )
})
