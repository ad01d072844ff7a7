/* Test-only stand-in for bcryptprimitives.dll, which Debian 12's Wine 8 lacks and Rust's
 * standard library imports (ProcessPrng). Never shipped: real Windows 10+ has the DLL. */
#include <windows.h>
#include <bcrypt.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}
