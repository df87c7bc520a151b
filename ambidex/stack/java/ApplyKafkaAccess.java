// Applies SCRAM users and ACLs to a Kafka cluster through Kafka's own Admin API (run by
// ambidex/stack/kafka_access.py as a single-file program: `java -cp <kafka jars> ThisFile`).
//
// Reads one JSON document on stdin (passwords never on the command line):
//   {"bootstrap": "host:port", "mechanism": "SCRAM_SHA_512", "iterations": 8192,
//    "users": [{"name": "...", "password": "..."}],
//    "acls": [{"principal": "User:...", "resourceType": "TOPIC", "name": "...",
//              "patternType": "LITERAL", "operation": "READ"}]}
// Upserts every user's credential, creates every ACL, and deletes the ACLs of those users
// that are no longer declared, so the cluster ends up with exactly the declared set.
// Prints counts only.

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class ApplyKafkaAccess {
    public static void main(String[] args) throws Exception {
        JsonNode spec = new ObjectMapper().readTree(System.in);
        Properties config = new Properties();
        config.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, spec.get("bootstrap").asText());
        config.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "60000");
        ScramMechanism mechanism = ScramMechanism.valueOf(spec.get("mechanism").asText());
        int iterations = spec.get("iterations").asInt();
        try (Admin admin = Admin.create(config)) {
            List<UserScramCredentialAlteration> users = new ArrayList<>();
            Set<String> principals = new HashSet<>();
            for (JsonNode user : spec.get("users")) {
                String name = user.get("name").asText();
                principals.add("User:" + name);
                users.add(new UserScramCredentialUpsertion(
                    name, new ScramCredentialInfo(mechanism, iterations),
                    user.get("password").asText()));
            }
            admin.alterUserScramCredentials(users).all().get();

            Set<AclBinding> wanted = new HashSet<>();
            for (JsonNode acl : spec.get("acls")) {
                wanted.add(new AclBinding(
                    new ResourcePattern(
                        ResourceType.valueOf(acl.get("resourceType").asText()),
                        acl.get("name").asText(),
                        PatternType.valueOf(acl.get("patternType").asText())),
                    new AccessControlEntry(
                        acl.get("principal").asText(), "*",
                        AclOperation.valueOf(acl.get("operation").asText()),
                        AclPermissionType.ALLOW)));
            }
            List<AclBindingFilter> stale = new ArrayList<>();
            for (AclBinding existing : admin.describeAcls(AclBindingFilter.ANY).values().get()) {
                if (principals.contains(existing.entry().principal()) && !wanted.contains(existing)) {
                    stale.add(existing.toFilter());
                }
            }
            if (!stale.isEmpty()) {
                admin.deleteAcls(stale).all().get();
            }
            admin.createAcls(wanted).all().get();
            System.out.println(
                users.size() + " users, " + wanted.size() + " ACLs applied, " + stale.size()
                    + " stale ACLs removed");
        }
    }
}
