import XCTest
@testable import AutoGLMKit

/// M-RoPE positions worked out by hand (the same cases as the Android engine's PositionsTest).
final class PositionsTests: XCTestCase {
    func testImageGridThenText() throws {
        let r = try Positions.ropeIndex(types: [0, 0, 1, 1, 1, 1, 1, 1, 0, 0], grids: [[1, 4, 6]], mergeSize: 2)
        XCTAssertEqual(r.ids[0], [0, 1, 2, 2, 2, 2, 2, 2, 5, 6])
        XCTAssertEqual(r.ids[1], [0, 1, 2, 2, 2, 3, 3, 3, 5, 6])
        XCTAssertEqual(r.ids[2], [0, 1, 2, 3, 4, 2, 3, 4, 5, 6])
        XCTAssertEqual(r.ropeDelta, -3)
        XCTAssertEqual(Positions.decode(cachePosition: 10, ropeDelta: r.ropeDelta), [[7], [7], [7]])
    }

    func testPlaceholderCountMustMatchGrid() {
        XCTAssertThrowsError(try Positions.ropeIndex(types: [0, 1, 1, 1], grids: [[1, 4, 4]], mergeSize: 2))
    }

    func testStreamDecoderHoldsBackHalfACharacter() {
        XCTAssertEqual(StreamDecoder.completePrefix([0xE4, 0xBD]), 0)
        XCTAssertEqual(StreamDecoder.completePrefix([0x61, 0xE4, 0xBD, 0xA0]), 4)
        XCTAssertEqual(StreamDecoder.completePrefix([0x61, 0xE4]), 1)
    }
}
