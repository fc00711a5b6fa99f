/**
 * What a child sees of the server: no secret variable, no value that carries a secret, and
 * output with every secret replaced, even one cut between two chunks.
 */
import { describe, expect, it } from "@effect/vitest"
import * as ChildEnv from "../../../infra/sandbox/ChildEnv.js"

const adminToken = "admin-token-0123456789abcdef"
const providerKey = "sk-provider-key-ABCDEFGHIJ"
const secrets = ChildEnv.secrets({
  variables: ["CUSTOM_KEY"],
  values: [adminToken, providerKey, "short", undefined]
})

describe("ChildEnv", () => {
  it("drops the server's own variables, provider keys and named secret variables", () => {
    const env = ChildEnv.childEnv(secrets, {
      PATH: "/usr/bin",
      VIBES_ADMIN_TOKEN: "x",
      VIBES_CLUSTER_SECRET: "x",
      VIBES_TOKEN: "x",
      DATABASE_URL: "postgres://u:p@h/db",
      PGPASSWORD: "x",
      ANTHROPIC_API_KEY: "x",
      OPENAI_API_KEY: "x",
      CUSTOM_KEY: "x",
      LANG: "C.UTF-8"
    })
    expect(env).toEqual({ PATH: "/usr/bin", LANG: "C.UTF-8" })
  })

  it("drops any variable whose value carries a secret, whatever its name", () => {
    const env = ChildEnv.childEnv(secrets, {
      HARMLESS: "fine",
      COPY: `Bearer ${adminToken}`,
      OTHER: providerKey
    })
    expect(env).toEqual({ HARMLESS: "fine" })
  })

  it("ignores values too short to be told from ordinary text", () => {
    expect(secrets.values).not.toContain("short")
    expect(ChildEnv.redact(secrets, "a short text")).toBe("a short text")
  })

  it("replaces every secret in a text", () => {
    expect(ChildEnv.redact(secrets, `a=${adminToken} b=${providerKey} c=${adminToken}`)).toBe(
      "a=[redacted] b=[redacted] c=[redacted]"
    )
  })

  it("redacts a secret cut between chunks at any point", () => {
    const text = `before ${adminToken} middle ${providerKey} after\n`
    for (let cut = 0; cut <= text.length; cut++) {
      for (let second = cut; second <= text.length; second += 7) {
        const redactor = ChildEnv.streamRedactor(secrets)
        const out =
          redactor.push(text.slice(0, cut)) +
          redactor.push(text.slice(cut, second)) +
          redactor.push(text.slice(second)) +
          redactor.end()
        expect(out).not.toContain(adminToken.slice(ChildEnv.holdFrom))
        expect(out).not.toContain(providerKey.slice(ChildEnv.holdFrom))
        expect(out).toContain("before ")
        expect(out).toContain(" after\n")
      }
    }
  })

  it("passes ordinary text on at once, holding nothing back", () => {
    const redactor = ChildEnv.streamRedactor(secrets)
    expect(redactor.push("ready\n")).toBe("ready\n")
    expect(redactor.push("adm")).toBe("adm")
    expect(redactor.end()).toBe("")
  })

  it("keeps back the start of a secret until the rest shows whether it is one", () => {
    const redactor = ChildEnv.streamRedactor(secrets)
    expect(redactor.push(`x ${adminToken.slice(0, 10)}`)).toBe("x ")
    expect(redactor.push("not the rest")).toBe(`${adminToken.slice(0, 10)}not the rest`)
    const other = ChildEnv.streamRedactor(secrets)
    expect(other.push(`x ${adminToken.slice(0, 10)}`) + other.push(adminToken.slice(10)) + other.end()).toBe(
      "x [redacted]"
    )
  })
})
