// SPDX-License-Identifier: Apache-2.0
// Looks at SoftHSM tokens directly (not through p11ha) for domain-test.sh:
//   domain_probe MODULE inspect TOKEN PIN LABEL     the domain key's attributes, check value, and
//                                                   the number of secret keys on the token
//   domain_probe MODULE replicate FROM TO PIN LABEL copy a WRAP_WITH_TRUSTED AES session key from
//                                                   token FROM to token TO under their domain keys
// The check value is recomputed here on its own (probe wrap + SHA-256), not with p11ha's code.
#include <dlfcn.h>
#include <openssl/evp.h>
#include <p11-kit/pkcs11.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

CK_FUNCTION_LIST* p11 = nullptr;
CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
CK_OBJECT_CLASS secret_class = CKO_SECRET_KEY;
CK_KEY_TYPE aes_type = CKK_AES;

void Check(CK_RV rv, const char* what) {
  if (rv != CKR_OK) throw std::runtime_error(std::string(what) + " -> 0x" + std::to_string(rv));
}

CK_SESSION_HANDLE OpenToken(const std::string& label, const std::string& pin) {
  CK_ULONG count = 0;
  Check(p11->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  Check(p11->C_GetSlotList(CK_TRUE, slots.data(), &count), "C_GetSlotList");
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    if (p11->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    std::string name(reinterpret_cast<char*>(info.label), sizeof info.label);
    name.erase(name.find_last_not_of(' ') + 1);
    if (name != label) continue;
    CK_SESSION_HANDLE session = 0;
    Check(p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &session), "C_OpenSession");
    CK_RV rv = p11->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())),
                            pin.size());
    if (rv != CKR_USER_ALREADY_LOGGED_IN) Check(rv, "C_Login");
    return session;
  }
  throw std::runtime_error("no token labelled " + label);
}

std::vector<CK_OBJECT_HANDLE> Find(CK_SESSION_HANDLE session, CK_ATTRIBUTE* match, CK_ULONG count) {
  Check(p11->C_FindObjectsInit(session, match, count), "C_FindObjectsInit");
  std::vector<CK_OBJECT_HANDLE> found(256);
  CK_ULONG n = 0;
  Check(p11->C_FindObjects(session, found.data(), found.size(), &n), "C_FindObjects");
  p11->C_FindObjectsFinal(session);
  found.resize(n);
  return found;
}

CK_OBJECT_HANDLE DomainKey(CK_SESSION_HANDLE session, const std::string& label) {
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &secret_class, sizeof secret_class},
                          {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  std::vector<CK_OBJECT_HANDLE> keys = Find(session, match, 2);
  if (keys.size() != 1) throw std::runtime_error("found " + std::to_string(keys.size()) + " domain keys");
  return keys[0];
}

std::vector<CK_BYTE> Wrap(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key, CK_RV* rv_out) {
  CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  std::vector<CK_BYTE> blob(4096);
  CK_ULONG size = blob.size();
  CK_RV rv = p11->C_WrapKey(session, &mechanism, wrapping, key, blob.data(), &size);
  if (rv_out) *rv_out = rv;
  else Check(rv, "C_WrapKey");
  blob.resize(rv == CKR_OK ? size : 0);
  return blob;
}

std::string CheckValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE dk) {
  CK_BYTE zeros[32] = {};
  CK_ATTRIBUTE probe_template[] = {
      {CKA_CLASS, &secret_class, sizeof secret_class}, {CKA_KEY_TYPE, &aes_type, sizeof aes_type},
      {CKA_VALUE, zeros, sizeof zeros}, {CKA_TOKEN, &no, 1}, {CKA_EXTRACTABLE, &yes, 1}, {CKA_SENSITIVE, &no, 1}};
  CK_OBJECT_HANDLE probe = 0;
  Check(p11->C_CreateObject(session, probe_template, 6, &probe), "C_CreateObject(probe)");
  std::vector<CK_BYTE> blob = Wrap(session, dk, probe, nullptr);
  p11->C_DestroyObject(session, probe);
  unsigned char digest[32];
  unsigned int size = 0;
  EVP_Digest(blob.data(), blob.size(), digest, &size, EVP_sha256(), nullptr);
  std::string hex;
  char two[3];
  for (int i = 0; i < 8; ++i) {
    std::snprintf(two, sizeof two, "%02x", digest[i]);
    hex += two;
  }
  return hex;
}

int Inspect(const std::string& token, const std::string& pin, const std::string& label) {
  CK_SESSION_HANDLE session = OpenToken(token, pin);
  CK_ATTRIBUTE all_secret[] = {{CKA_CLASS, &secret_class, sizeof secret_class}};
  std::printf("secret-keys=%zu\n", Find(session, all_secret, 1).size());
  CK_ATTRIBUTE match[] = {{CKA_CLASS, &secret_class, sizeof secret_class},
                          {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
  if (Find(session, match, 2).empty()) return 0;
  CK_OBJECT_HANDLE dk = DomainKey(session, label);
  struct { const char* name; CK_ATTRIBUTE_TYPE type; } flags[] = {
      {"token", CKA_TOKEN}, {"private", CKA_PRIVATE}, {"trusted", CKA_TRUSTED}, {"sensitive", CKA_SENSITIVE},
      {"extractable", CKA_EXTRACTABLE}, {"modifiable", CKA_MODIFIABLE}, {"wrap", CKA_WRAP},
      {"unwrap", CKA_UNWRAP}, {"encrypt", CKA_ENCRYPT}, {"decrypt", CKA_DECRYPT}, {"derive", CKA_DERIVE},
      {"sign", CKA_SIGN}, {"verify", CKA_VERIFY}};
  for (auto& flag : flags) {
    CK_BBOOL value = 0;
    CK_ATTRIBUTE attribute{flag.type, &value, 1};
    Check(p11->C_GetAttributeValue(session, dk, &attribute, 1), flag.name);
    std::printf("%s=%d\n", flag.name, value);
  }
  CK_MECHANISM_TYPE mechanisms[8];
  CK_ATTRIBUTE allowed{CKA_ALLOWED_MECHANISMS, mechanisms, sizeof mechanisms};
  Check(p11->C_GetAttributeValue(session, dk, &allowed, 1), "allowed mechanisms");
  std::printf("allowed-mechanisms=");
  for (CK_ULONG i = 0; i < allowed.ulValueLen / sizeof(CK_MECHANISM_TYPE); ++i)
    std::printf("%s0x%lx", i ? "," : "", mechanisms[i]);
  // Nested attributes in three steps: the count, then types and lengths, then values.
  CK_ATTRIBUTE nested{CKA_UNWRAP_TEMPLATE, nullptr, 0};
  Check(p11->C_GetAttributeValue(session, dk, &nested, 1), "unwrap template size");
  std::vector<CK_ATTRIBUTE> unwrap_template(nested.ulValueLen / sizeof(CK_ATTRIBUTE));
  nested.pValue = unwrap_template.data();
  Check(p11->C_GetAttributeValue(session, dk, &nested, 1), "unwrap template types");
  std::vector<CK_BBOOL> values(unwrap_template.size());
  for (std::size_t i = 0; i < values.size(); ++i) unwrap_template[i].pValue = &values[i];
  Check(p11->C_GetAttributeValue(session, dk, &nested, 1), "unwrap template values");
  std::printf("\nunwrap-template=");
  for (std::size_t i = 0; i < values.size(); ++i)
    std::printf("%s0x%lx:%d", i ? "," : "", unwrap_template[i].type, values[i]);
  char id[64] = {};
  CK_ATTRIBUTE id_attribute{CKA_ID, id, sizeof id};
  Check(p11->C_GetAttributeValue(session, dk, &id_attribute, 1), "id");
  std::printf("\nid=");
  for (CK_ULONG i = 0; i < id_attribute.ulValueLen; ++i) std::printf("%02x", static_cast<unsigned char>(id[i]));
  std::printf("\ncheck-value=%s\n", CheckValue(session, dk).c_str());
  return 0;
}

std::vector<CK_BYTE> EncryptZeroBlock(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE key) {
  CK_MECHANISM ecb{CKM_AES_ECB, nullptr, 0};
  CK_BYTE block[16] = {}, out[16] = {};
  CK_ULONG size = sizeof out;
  Check(p11->C_EncryptInit(session, &ecb, key), "C_EncryptInit");
  Check(p11->C_Encrypt(session, block, sizeof block, out, &size), "C_Encrypt");
  return std::vector<CK_BYTE>(out, out + size);
}

int Replicate(const std::string& from, const std::string& to, const std::string& pin, const std::string& label) {
  CK_SESSION_HANDLE a = OpenToken(from, pin), b = OpenToken(to, pin);
  CK_OBJECT_HANDLE dk_a = DomainKey(a, label), dk_b = DomainKey(b, label);
  // Born as p11ha makes keys: extractable only under a trusted key.
  CK_ULONG length = 32;
  CK_ATTRIBUTE key_template[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &length, sizeof length},
                                 {CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1},
                                 {CKA_WRAP_WITH_TRUSTED, &yes, 1}, {CKA_ENCRYPT, &yes, 1}};
  CK_MECHANISM generate{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE key = 0;
  Check(p11->C_GenerateKey(a, &generate, key_template, 6, &key), "C_GenerateKey");
  std::vector<CK_BYTE> blob = Wrap(a, dk_a, key, nullptr);
  // A session copy: the domain key's unwrap template must not force CKA_TOKEN.
  CK_ATTRIBUTE copy_template[] = {{CKA_CLASS, &secret_class, sizeof secret_class},
                                  {CKA_KEY_TYPE, &aes_type, sizeof aes_type}, {CKA_TOKEN, &no, 1},
                                  {CKA_PRIVATE, &yes, 1}, {CKA_SENSITIVE, &yes, 1}, {CKA_EXTRACTABLE, &yes, 1},
                                  {CKA_WRAP_WITH_TRUSTED, &yes, 1}, {CKA_ENCRYPT, &yes, 1}};
  CK_MECHANISM kwp{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  CK_OBJECT_HANDLE copy = 0;
  Check(p11->C_UnwrapKey(b, &kwp, dk_b, blob.data(), blob.size(), copy_template, 8, &copy), "C_UnwrapKey");
  bool same = EncryptZeroBlock(a, key) == EncryptZeroBlock(b, copy) && Wrap(b, dk_b, copy, nullptr) == blob;
  std::printf("copy-identical=%d\n", same ? 1 : 0);
  // The unwrap template is enforced: a copy may not come out non-sensitive.
  copy_template[4].pValue = &no;
  CK_OBJECT_HANDLE loose = 0;
  CK_RV rv = p11->C_UnwrapKey(b, &kwp, dk_b, blob.data(), blob.size(), copy_template, 8, &loose);
  std::printf("unwrap-non-sensitive-refused=%d\n", rv == CKR_TEMPLATE_INCONSISTENT ? 1 : 0);
  // Only a trusted key wraps it: a plain user key may not.
  CK_ATTRIBUTE plain_template[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &length, sizeof length}, {CKA_WRAP, &yes, 1}};
  CK_OBJECT_HANDLE plain = 0;
  Check(p11->C_GenerateKey(b, &generate, plain_template, 3, &plain), "C_GenerateKey(plain)");
  Wrap(b, plain, copy, &rv);
  std::printf("untrusted-wrap-refused=%d\n", rv == CKR_KEY_NOT_WRAPPABLE ? 1 : 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() < 2) throw std::runtime_error("usage: domain_probe MODULE inspect|replicate ...");
    void* module = dlopen(args[0].c_str(), RTLD_NOW);
    if (module == nullptr) throw std::runtime_error(dlerror());
    auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(module, "C_GetFunctionList"));
    Check(get(&p11), "C_GetFunctionList");
    CK_C_INITIALIZE_ARGS init{};
    init.flags = CKF_OS_LOCKING_OK;
    Check(p11->C_Initialize(&init), "C_Initialize");
    int rc = 2;
    if (args[1] == "inspect" && args.size() == 5) rc = Inspect(args[2], args[3], args[4]);
    if (args[1] == "replicate" && args.size() == 6) rc = Replicate(args[2], args[3], args[4], args[5]);
    p11->C_Finalize(nullptr);
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "domain_probe: %s\n", e.what());
    return 1;
  }
}
