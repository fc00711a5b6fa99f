import { Effect, Layer } from "effect"
import * as S3Storage from "../../../infra/storage/S3Storage.js"
import { Storage } from "../../../infra/storage/Storage.js"
import * as TestS3 from "../../support/TestS3.js"
import { storageContract } from "./contract.js"

const s3 = Layer.scoped(
  Storage,
  Effect.flatMap(TestS3.start, ({ settings }) => S3Storage.make(settings))
)

storageContract("S3 storage (s3rver on loopback)", s3)
