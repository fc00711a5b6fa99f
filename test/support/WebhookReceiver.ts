/**
 * A webhook receiver on a loopback port: it verifies every delivery's Standard Webhooks signature
 * with the `standardwebhooks` library (an implementation independent of vibes'), and answers as
 * the test tells it to: 204, or a failure status.
 */
import * as http from "node:http"
import { Effect } from "effect"
import { Webhook } from "standardwebhooks"

/** One request the receiver got. */
export interface Received {
  readonly id: string
  readonly verified: boolean
  readonly body: string
  /** What it answered. */
  readonly status: number
}

/** A running receiver. */
export interface Receiver {
  readonly url: string
  /** Every request, in arrival order. */
  readonly requests: Array<Received>
  /** The status it answers with from now on (2xx: accepted). */
  answer: number
  /** Parsed bodies of the verified requests it accepted, in arrival order. */
  readonly accepted: () => ReadonlyArray<{ readonly id: string; readonly body: unknown }>
}

/** Starts a receiver checking signatures with `secret` (`whsec_…`), for the life of the scope. */
export const start = (secret: string) =>
  Effect.gen(function* () {
    const webhook = new Webhook(secret)
    const requests: Array<Received> = []
    const state = { answer: 204 }
    const server = http.createServer((request, response) => {
      const chunks: Array<Buffer> = []
      request.on("data", (chunk: Buffer) => chunks.push(chunk))
      request.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8")
        const headers: Record<string, string> = {}
        for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature"]) {
          const value = request.headers[name]
          if (typeof value === "string") headers[name] = value
        }
        let verified = false
        try {
          webhook.verify(body, headers)
          verified = true
        } catch {
          verified = false
        }
        const status = verified ? state.answer : 401
        requests.push({ id: headers["webhook-id"] ?? "", verified, body, status })
        response.writeHead(status)
        response.end()
      })
    })
    yield* Effect.acquireRelease(
      Effect.async<void>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          server.closeAllConnections()
          server.close(() => resume(Effect.void))
        })
    )
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    const receiver: Receiver = {
      url: `http://127.0.0.1:${port}/hook`,
      requests,
      get answer() {
        return state.answer
      },
      set answer(status: number) {
        state.answer = status
      },
      accepted: () =>
        requests
          .filter((request) => request.verified && request.status >= 200 && request.status < 300)
          .map((request) => ({ id: request.id, body: JSON.parse(request.body) as unknown }))
    }
    return receiver
  })
