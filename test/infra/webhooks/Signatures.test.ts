import { describe, expect, it } from "@effect/vitest"
import { Webhook } from "standardwebhooks"
import * as Signatures from "../../../infra/webhooks/Signatures.js"
import { github, slack } from "../../support/WebhookVectors.js"

describe("webhook signatures", () => {
  it("GitHub's published example verifies; a changed body or signature does not", () => {
    const headers = { "x-hub-signature-256": github.signature, "x-github-delivery": "d-1" }
    expect(Signatures.verifyGitHub(github.secret, headers, Buffer.from(github.payload))).toEqual({
      _tag: "Verified",
      deliveryId: "d-1"
    })
    expect(Signatures.verifyGitHub(github.secret, headers, Buffer.from("Hello, World?"))._tag).toBe("Refused")
    expect(Signatures.verifyGitHub("another secret", headers, Buffer.from(github.payload))._tag).toBe(
      "Refused"
    )
    expect(Signatures.verifyGitHub(github.secret, {}, Buffer.from(github.payload))).toEqual({
      _tag: "Refused",
      reason: "missing"
    })
  })

  it("Slack's documented example verifies at its own time, and is stale five minutes later", () => {
    const headers = { "x-slack-signature": slack.signature, "x-slack-request-timestamp": slack.timestamp }
    const at = Number(slack.timestamp)
    expect(Signatures.verifySlack(slack.secret, headers, Buffer.from(slack.body), at + 10)._tag).toBe(
      "Verified"
    )
    expect(Signatures.verifySlack(slack.secret, headers, Buffer.from(slack.body), at + 301)).toEqual({
      _tag: "Refused",
      reason: "stale"
    })
    expect(Signatures.verifySlack(slack.secret, headers, Buffer.from(`${slack.body}x`), at)).toEqual({
      _tag: "Refused",
      reason: "mismatch"
    })
  })

  it("Standard Webhooks signatures agree with the standardwebhooks library both ways", () => {
    const secret = Signatures.newSecret()
    const body = JSON.stringify({ type: "job.done", data: { a: 1 } })
    const now = Math.floor(Date.now() / 1000)
    const signed = Signatures.sign(secret, "msg_1", now, body)
    // The library checks our signature...
    expect(new Webhook(secret).verify(body, { ...signed })).toEqual(JSON.parse(body))
    // ...and we check the library's.
    const theirs = new Webhook(secret).sign("msg_2", new Date(now * 1000), body)
    const headers = { "webhook-id": "msg_2", "webhook-timestamp": String(now), "webhook-signature": theirs }
    expect(Signatures.verifyStandard(secret, headers, Buffer.from(body), now)).toEqual({
      _tag: "Verified",
      deliveryId: "msg_2"
    })
    expect(Signatures.verifyStandard(secret, headers, Buffer.from(body), now + 301)).toEqual({
      _tag: "Refused",
      reason: "stale"
    })
    expect(Signatures.verifyStandard(Signatures.newSecret(), headers, Buffer.from(body), now)).toEqual({
      _tag: "Refused",
      reason: "mismatch"
    })
  })
})
