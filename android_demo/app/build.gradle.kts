plugins {
    id("com.android.application")
}

val executorchVersion: String by project
val djlVersion: String by project

android {
    namespace = "org.autoglm.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.autoglm.demo"
        minSdk = 28 // ImageDecoder
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            abiFilters += "arm64-v8a"
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_11
        targetCompatibility = JavaVersion.VERSION_11
    }

    packaging {
        jniLibs {
            useLegacyPackaging = true // extracted .so files, as ExecuTorch's demo apps do
        }
    }
}

dependencies {
    implementation(project(":engine"))
    implementation("org.pytorch:executorch-android:$executorchVersion")
    implementation("ai.djl.huggingface:tokenizers:$djlVersion")
    implementation("ai.djl.android:tokenizer-native:$djlVersion")
    implementation("com.google.code.gson:gson:2.10.1")
    implementation("androidx.appcompat:appcompat:1.7.0")
    implementation("androidx.activity:activity:1.9.3")
    implementation("com.facebook.soloader:soloader:0.10.5")
    implementation("com.facebook.fbjni:fbjni:0.7.0")
}
