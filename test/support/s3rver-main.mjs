// An S3-protocol server for tests: `node --openssl-legacy-provider s3rver-main.mjs DIR BUCKET`.
// Listens on a free loopback port and prints `listening PORT` once it answers.
// (s3rver's ListObjectsV2 continuation tokens use DES, which OpenSSL 3 keeps in its legacy provider.)
import S3rver from "s3rver"

const [dir, bucket] = process.argv.slice(2)
if (dir === undefined || bucket === undefined) throw new Error("usage: s3rver-main.mjs DIR BUCKET")
const server = new S3rver({
  address: "127.0.0.1",
  port: 0,
  silent: true,
  directory: dir,
  configureBuckets: [{ name: bucket }]
})
const { port } = await server.run()
process.stdout.write(`listening ${port}\n`)
const stop = () => server.close().finally(() => process.exit(0))
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
