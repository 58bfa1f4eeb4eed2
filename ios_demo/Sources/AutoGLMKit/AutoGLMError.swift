import Foundation

/// A problem with the bundle or the request, said in one line (shown to the user as is).
public struct AutoGLMError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}
