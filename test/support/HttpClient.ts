/**
 * Plain HTTP requests with control over what `fetch` hides: the local address a request comes
 * from (any 127.x.y.z on Linux loopback), forbidden headers, and every `Set-Cookie` line.
 */
import * as http from "node:http"
import { Effect } from "effect"

/** An answer, whole. */
export interface Answer {
  readonly status: number
  readonly headers: http.IncomingHttpHeaders
  readonly body: string
}

/** What to send. */
export interface Options {
  readonly method?: string
  readonly headers?: Record<string, string>
  readonly body?: string | Buffer
  readonly localAddress?: string
  /** Resolve once the status and headers arrived (the body is then empty): for streams. */
  readonly headersOnly?: boolean
}

/** Sends one request and reads the whole answer. */
export const request = (url: string, options: Options = {}): Effect.Effect<Answer, Error> =>
  Effect.async<Answer, Error>((resume) => {
    const target = new URL(url)
    const outgoing = http.request(
      {
        host: target.hostname,
        port: Number(target.port),
        path: `${target.pathname}${target.search}`,
        method: options.method ?? "GET",
        headers: options.headers ?? {},
        agent: false,
        ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {})
      },
      (response) => {
        if (options.headersOnly === true) {
          resume(Effect.succeed({ status: response.statusCode ?? 0, headers: response.headers, body: "" }))
          outgoing.destroy()
          return
        }
        let body = ""
        response.setEncoding("utf8")
        response.on("data", (chunk: string) => (body += chunk))
        response.on("end", () =>
          resume(Effect.succeed({ status: response.statusCode ?? 0, headers: response.headers, body }))
        )
      }
    )
    outgoing.on("error", (error) => resume(Effect.fail(error)))
    outgoing.end(options.body)
    return Effect.sync(() => outgoing.destroy())
  })

/** The `name=value` of a cookie an answer sets, if it sets one. */
export const setCookie = (answer: Answer, name: string): string | undefined =>
  (answer.headers["set-cookie"] ?? [])
    .map((line) => line.split(";")[0] ?? "")
    .find((pair) => pair.startsWith(`${name}=`))
