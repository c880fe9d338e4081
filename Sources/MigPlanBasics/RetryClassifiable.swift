/// An error that knows whether trying again may succeed. The executor retries a failed step only
/// when its error conforms and says `isRetryable` (a lost connection, a timeout); any other error
/// (a refused host key, a digest mismatch) fails the step at once.
public protocol RetryClassifiable: Error {
    var isRetryable: Bool { get }
}
