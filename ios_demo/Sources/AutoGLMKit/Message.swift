/// One chat turn: a role and its parts (text, image, audio; media only in user turns).
public struct Message {
    public enum Part: Equatable {
        case text(String)
        case image
        case audio
    }

    public let role: String
    public let parts: [Part]

    public init(role: String, parts: [Part]) throws {
        guard ["system", "user", "assistant"].contains(role) else {
            throw AutoGLMError("unsupported message role '\(role)' (expected system, user or assistant)")
        }
        if role != "user", parts.contains(where: { !Message.isText($0) }) {
            throw AutoGLMError("image and audio parts are only allowed in user messages, not \(role)")
        }
        self.role = role
        self.parts = parts
    }

    static func isText(_ p: Part) -> Bool {
        if case .text = p { return true }
        return false
    }

    func count(_ part: Part) -> Int { parts.filter { $0 == part }.count }
}
