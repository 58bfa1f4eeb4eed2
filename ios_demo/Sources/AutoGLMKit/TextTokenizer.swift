import Foundation
import Tokenizers

/// Text to token ids, special-token strings mapped to their ids, none added.
public protocol TextTokenizer {
    func encode(_ text: String) throws -> [Int]
}

/// The bundle's tokenizer.json through swift-transformers' `Tokenizers` (Hugging Face's Swift
/// port; it reads tokenizer.json / tokenizer_config.json from a folder).
public struct HubTokenizer: TextTokenizer {
    let tokenizer: Tokenizer

    public static func load(bundle: URL) async throws -> HubTokenizer {
        do {
            return HubTokenizer(tokenizer: try await AutoTokenizer.from(modelFolder: bundle))
        } catch {
            throw AutoGLMError("\(bundle.appendingPathComponent("tokenizer.json").path): cannot load: \(error)")
        }
    }

    public func encode(_ text: String) throws -> [Int] {
        tokenizer.encode(text: text, addSpecialTokens: false)
    }
}
