// Top-level build file: plugin versions only; see app/ and engine/.
plugins {
    id("com.android.application") version "8.7.3" apply false
}
