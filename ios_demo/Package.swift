// swift-tools-version:5.10
// AutoGLMKit: runs an autoglm-export Core ML bundle (dist/ios) on iOS 17+ / macOS 14+.
import PackageDescription

let package = Package(
    name: "AutoGLMKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "AutoGLMKit", targets: ["AutoGLMKit"]),
    ],
    dependencies: [
        // Hugging Face's Swift port of tokenizers (the `Tokenizers` product reads tokenizer.json).
        .package(url: "https://github.com/huggingface/swift-transformers", from: "0.1.17"),
    ],
    targets: [
        .target(
            name: "AutoGLMKit",
            dependencies: [
                .product(name: "Tokenizers", package: "swift-transformers"),
                .product(name: "Hub", package: "swift-transformers"),
            ]
        ),
        .testTarget(name: "AutoGLMKitTests", dependencies: ["AutoGLMKit"]),
    ]
)
