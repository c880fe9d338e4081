import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A cancellation flag for one job, set from any thread; setting it wakes the session thread's
/// `poll()` through the thread's eventfd.
final class CancelToken: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled = false
    private let thread: SessionThread

    init(thread: SessionThread) { self.thread = thread }

    func cancel() {
        lock.lock()
        cancelled = true
        lock.unlock()
        thread.wake()
    }

    var isCancelled: Bool {
        lock.lock(); defer { lock.unlock() }
        return cancelled
    }
}

/// One dedicated thread that runs a connection's jobs one after another. Every libssh2 call of a
/// connection happens on its thread, so Swift's cooperative pool never blocks on the network.
/// When idle, the thread wakes every `idleInterval` to run `idleTick` (keepalives).
final class SessionThread: @unchecked Sendable {
    typealias Job = () -> Void

    private let condition = NSCondition()
    private var jobs: [Job] = []
    private var stopping = false
    private var idleTick: (() -> Void)?
    private var idleInterval: TimeInterval?
    /// A pipe's read end, polled by the session's waits; `wake()` writes a byte to `wakeWriteFD`.
    let wakeFD: Int32
    private let wakeWriteFD: Int32

    init(name: String) {
        var fds: [Int32] = [-1, -1]
        let rc = pipe(&fds)
        precondition(rc == 0, "pipe failed")
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeFD = fds[0]
        wakeWriteFD = fds[1]
        let thread = Thread { [self] in self.main() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Must be called on the thread (e.g. from the connect job).
    func setIdleTick(interval: TimeInterval?, _ tick: (() -> Void)?) {
        condition.lock()
        idleInterval = interval
        idleTick = tick
        condition.unlock()
    }

    /// Adds a job; false when the thread is stopping (the connection is closed).
    @discardableResult
    func enqueue(_ job: @escaping Job) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if stopping { return false }
        jobs.append(job)
        condition.signal()
        return true
    }

    /// Jobs already queued still run; then the thread ends. Idempotent.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    deinit {
        close(wakeFD)
        close(wakeWriteFD)
    }

    /// Interrupts a `poll()` on `wakeFD`.
    func wake() {
        var one: UInt8 = 1
        _ = Glibc.write(wakeWriteFD, &one, 1)
    }

    /// Drains pending wake-ups (called by waits before polling).
    func drainWake() {
        var scratch = [UInt8](repeating: 0, count: 64)
        while Glibc.read(wakeFD, &scratch, scratch.count) > 0 {}
    }

    private func main() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping {
                if let interval = idleInterval {
                    if !condition.wait(until: Date(timeIntervalSinceNow: interval)) && jobs.isEmpty && !stopping {
                        let tick = idleTick
                        condition.unlock()
                        tick?()
                        condition.lock()
                    }
                } else {
                    condition.wait()
                }
            }
            if jobs.isEmpty && stopping {
                condition.unlock()
                break
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }

    /// Runs `body` on the thread and returns its result to the caller's task. Cancelling the task
    /// sets the job's token and wakes the thread; the body notices in its next wait.
    func perform<T: Sendable>(
        _ body: @escaping @Sendable (CancelToken) throws(SSHError) -> T,
        closedError: @escaping @Sendable () -> SSHError
    ) async throws(SSHError) -> T {
        let token = CancelToken(thread: self)
        let result: Result<T, SSHError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<T, SSHError>, Never>) in
                let accepted = enqueue {
                    continuation.resume(returning: Result { () throws(SSHError) -> T in try body(token) })
                }
                if !accepted { continuation.resume(returning: .failure(closedError())) }
            }
        } onCancel: {
            token.cancel()
        }
        return try result.get()
    }
}
