import Foundation
import Hub
import Tokenizers

/// Text to token ids, special-token strings mapped to their ids, none added.
public protocol TextTokenizer {
    func encode(_ text: String) throws -> [Int]
}

/// The bundle's tokenizer.json through swift-transformers' `Tokenizers` (Hugging Face's Swift
/// port of tokenizers). Bundles carry no tokenizer_config.json, so a minimal one is supplied: the
/// model (byte-level BPE), normaliser, pre-tokeniser and added tokens all come from tokenizer.json.
public struct HubTokenizer: TextTokenizer {
    let tokenizer: Tokenizer

    public static func load(bundle: URL) async throws -> HubTokenizer {
        let path = bundle.appendingPathComponent("tokenizer.json")
        do {
            if FileManager.default.fileExists(atPath: bundle.appendingPathComponent("tokenizer_config.json").path) {
                return HubTokenizer(tokenizer: try await AutoTokenizer.from(modelFolder: bundle))
            }
            guard let json = try JSONSerialization.jsonObject(with: Data(contentsOf: path)) as? [NSString: Any] else {
                throw AutoGLMError("not a JSON object")
            }
            let config = Config(["tokenizer_class": "PreTrainedTokenizerFast"] as [NSString: Any])
            return HubTokenizer(tokenizer: try AutoTokenizer.from(tokenizerConfig: config, tokenizerData: Config(json)))
        } catch {
            throw AutoGLMError("\(path.path): cannot load: \(error)")
        }
    }

    public func encode(_ text: String) throws -> [Int] {
        tokenizer.encode(text: text, addSpecialTokens: false)
    }
}
