/**
 * What the REST APIs (jobs, sessions) share: JSON answers with the node's headers, errors as
 * `{ error, message, field? }`, and request bodies read under a size limit and decoded with a
 * schema before anything acts on them.
 */
import { Effect, Either, Option, ParseResult, Schema } from "effect"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { firstIssue } from "../../rpc/Text.js"
import { securityHeaders } from "../../infra/net/Headers.js"

/** A JSON answer. */
export const json = (status: number, body: unknown) =>
  HttpServerResponse.unsafeJson(body, { status, headers: securityHeaders })

/** A 400 answer. */
export const badRequest = (message: string) => json(400, { error: "BadRequest", message })

/** A schema's complaint as one line: `path: message; …`. */
export const formatIssue = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

/** Why a body was refused: a 413 when it is too large, a 400 otherwise. */
export interface Refused {
  readonly status: 400 | 413
  readonly message: string
  /** The refused field's dotted path, when one is to blame. */
  readonly field?: string
}

/** The answer to a refused body. */
export const refuse = (refused: Refused) =>
  json(refused.status, {
    error: refused.status === 413 ? "PayloadTooLarge" : "BadRequest",
    message: refused.message,
    ...(refused.field !== undefined ? { field: refused.field } : {})
  })

/**
 * Reads a body of at most `maxBytes`. The limit holds while the body streams in (a chunked body
 * has no length to check first): past it, reading stops, so an oversized body is never held whole.
 */
export const rawBody = (maxBytes: number) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const tooLarge: Refused = {
      status: 413,
      message: `the body is larger than the limit of ${maxBytes} bytes`
    }
    if (Number(request.headers["content-length"] ?? "0") > maxBytes) return Either.left(tooLarge)
    const read = yield* request.arrayBuffer.pipe(
      HttpServerRequest.withMaxBodySize(Option.some(maxBytes)),
      Effect.either
    )
    if (Either.isLeft(read)) {
      return Either.left<Refused>(
        String(read.left.cause).includes("maxBytes exceeded")
          ? tooLarge
          : { status: 400, message: "the body could not be read" }
      )
    }
    return Either.right(new Uint8Array(read.right))
  })

const utf8 = new TextDecoder("utf-8", { fatal: true })

/** Reads a JSON body of at most `maxBytes`, decoded with `schema` (unknown fields refused). */
export const jsonBody = <A, I>(schema: Schema.Schema<A, I>, maxBytes: number) =>
  Effect.gen(function* () {
    const bytes = yield* rawBody(maxBytes)
    if (Either.isLeft(bytes)) return Either.left<Refused>(bytes.left)
    const parsed = Either.try(() => JSON.parse(utf8.decode(bytes.right)) as unknown)
    if (Either.isLeft(parsed))
      return Either.left<Refused>({ status: 400, message: "the body is not valid JSON" })
    return Either.mapLeft(
      Schema.decodeUnknownEither(schema)(parsed.right, { onExcessProperty: "error" }),
      (error): Refused => {
        const issue = firstIssue(error, "body")
        return {
          status: 400,
          message: formatIssue(error),
          ...(issue.field !== "body" ? { field: issue.field } : {})
        }
      }
    )
  })
